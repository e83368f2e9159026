"""One training job from a composed config: input errors as one clear line, and in a Hydra multirun
(basic launcher, Optuna, Slurm) W&B names and groups per sweep and failed jobs that do not stop it."""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from eval.cli import USER_ERRORS, exit_on_user_error
from trainer.config import RUN_STAMP_ENV, run_stamp
from trainer.distributed import broadcast_from_main, init_distributed
from trainer.faults import REQUEUE_EXIT_CODE, Diverged, Preempted
from trainer.loop import Trainer
from trainer.metrics import close_failed_run
from trainer.redact import redact, redact_overrides

FAILED_FILE = "FAILED"


@dataclass
class SweepJob:
    """Where this process sits in a Hydra multirun."""

    num: int = 0
    overrides: list[str] = field(default_factory=list)  # this job's task overrides
    swept: list[str] = field(default_factory=list)  # of those, the ones the sweep varies
    sweep_id: str = ""

    @property
    def name(self) -> str:
        """The W&B run name: the job's swept overrides (all of them if none is known to be swept)."""
        return ",".join(self.swept or self.overrides) or f"job{self.num}"


def run_training(cfg: DictConfig) -> float | None:
    """Train and return the final `sweep.objective` metric (None when the run measured none).

    In a multirun a failed job returns NaN instead of raising (see `record_failure`), and a
    missing objective fails the job, since a sweeper cannot rank it. A preempted run (checkpoint
    written) exits with `REQUEUE_EXIT_CODE`, also out of a multirun; a diverged one prints why and
    exits with 1.
    """
    job = sweep_job()
    if job is not None:
        label_sweep_run(cfg, job)
    with exit_on_user_error():
        try:
            metrics = Trainer(cfg).train()
            value = metrics.get(cfg.sweep.objective)
            if value is None and job is not None:
                raise ValueError(f"sweep.objective={cfg.sweep.objective!r} was not measured; the run's final "
                                 f"metrics: {sorted(metrics)} (a dev split gives eval/loss)")
            return value
        except Preempted:
            raise SystemExit(REQUEUE_EXIT_CODE) from None
        except Exception as err:
            if job is not None:
                return record_failure(cfg, job, err)
            if isinstance(err, Diverged):
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(1) from None
            raise


def share_run_dir(argv: list[str], config_dir: str) -> list[str]:
    """Before Hydra starts, under torchrun: join the process group, take rank 0's
    run stamp (so all ranks and nodes compose the same run or sweep directory even when they
    start seconds apart) and keep ranks other than 0 from writing their own `.hydra/` and log.
    Returns the arguments Hydra should parse.

    The group is made once, here, for the whole process (a multirun's jobs share it), with the
    backend and timeout the command line's `dist`/`train.device` choices give.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return argv
    cfg = _compose_dist(argv, config_dir)
    ctx = init_distributed(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_minutes)
    os.environ[RUN_STAMP_ENV] = broadcast_from_main(os.environ.get(RUN_STAMP_ENV) or run_stamp())
    if ctx.is_main:
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=stdout"]


def _compose_dist(argv: list[str], config_dir: str) -> DictConfig:
    """The run config with only the command line's non-swept `dist`/`train.device` overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    keep = [o.input_line for o in parsed if not o.is_sweep_override()
            and (o.key_or_group.split(".")[0] == "dist" or o.key_or_group == "train.device")]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        try:
            return compose(config_name="train", overrides=keep)
        except HydraException:  # a bad dist choice: Hydra's own run reports it, in its words
            return compose(config_name="train")


def sweep_job() -> SweepJob | None:
    """This job's place in a Hydra multirun; None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    keys = swept_keys(sys.argv[1:], list(hydra.sweeper.get("params") or {}))
    swept = [o for o in overrides if o.partition("=")[0].lstrip("+~") in keys]
    return SweepJob(int(hydra.job.num), overrides, swept, "/".join(Path(hydra.sweep.dir).parts[-2:]))


def swept_keys(argv: list[str], sweeper_params: list[str]) -> set[str]:
    """Keys a multirun varies: `hydra.sweeper.params` and command-line sweeps (`a=1,2`, `interval(...)`).

    The command line is only this process's own under launchers that run jobs in it (basic,
    and Optuna over it); elsewhere (Slurm) the job's name falls back to all its overrides.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except HydraException:
        parsed = []
    return set(sweeper_params) | {o.key_or_group for o in parsed if o.is_sweep_override()}


def label_sweep_run(cfg: DictConfig, job: SweepJob) -> None:
    """Name the job's W&B run after its overrides and group it by sweep, unless the config says otherwise."""
    if cfg.logger.name is None:
        cfg.logger.name = job.name
    if cfg.logger.group is None:
        cfg.logger.group = job.sweep_id


def record_failure(cfg: DictConfig, job: SweepJob, err: Exception) -> float:
    """Report a failed sweep job with its overrides, leave `<output_dir>/FAILED` saying why, and return
    NaN: the basic launcher goes on with the next job, and Optuna records the trial as failed
    (a NaN objective) and goes on too."""
    close_failed_run()
    detail = f"{err}\n" if isinstance(err, USER_ERRORS) else traceback.format_exc()
    message = redact(f"job #{job.num} ({' '.join(redact_overrides(job.overrides))}) failed: {detail}")
    print(f"error: {message}", file=sys.stderr, end="")
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun: one record per job
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / FAILED_FILE).write_text(message, encoding="utf-8")
    return float("nan")
