"""What the loop does about faults it cannot prevent: preemption signals, divergence, and the
test-only fault injection that `tests/test_faults.py` drives through the environment."""
from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

# Exit status of a run that checkpointed because it was told to stop: "temporary failure, run me again"
# (sysexits' EX_TEMPFAIL). launch/slurm/train.sbatch requeues the job; `resume=auto` continues it.
REQUEUE_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Test-only: "<kind>@step=<n>[,rank=<r>]" makes optimizer step <n> (on rank <r>, else every rank) fail on
# purpose. Kinds: `raise` (an exception, as a crashing rank), `nan_loss` (this rank reports a NaN loss) and
# `kill_in_save` (SIGKILL once the engine wrote its shards of step <n>'s checkpoint, before the commit). A fault
# fires only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT unset or 0), so a group that
# `--max-restarts` restarted resumes and finishes instead of failing at the same step again.
FAULT_INJECT_ENV = "TURNPACK_FAULT_INJECT"


class Preempted(Exception):
    """Training stopped at a step boundary because a signal asked it to; the checkpoint is written."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted at step {step}: checkpoint {directory}")
        self.step, self.directory = step, directory


class Diverged(FloatingPointError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient norm."""


class PreemptionFlag:
    """While entered, the first SIGTERM, SIGINT or SIGUSR1 only sets `requested` (its name): the loop
    finishes the step, checkpoints and stops. A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at
    once. The previous handlers come back on exit. Outside the main thread (where Python cannot install
    handlers) it does nothing."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            print(f"{self.requested} received: checkpointing after this step, then exiting with "
                  f"{REQUEUE_EXIT_CODE} (Ctrl-C again exits at once)", file=sys.stderr, flush=True)


def injected(kind: str, step: int, rank: int) -> bool:
    """Whether `$TURNPACK_FAULT_INJECT` asks for fault `kind` at optimizer step `step` on `rank`."""
    spec = os.environ.get(FAULT_INJECT_ENV)
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
        return False
    name, _, where = spec.partition("@")
    fields = dict(item.split("=", 1) for item in where.split(",") if "=" in item)
    return (name == kind and int(fields.get("step", -1)) == step
            and ("rank" not in fields or int(fields["rank"]) == rank))
