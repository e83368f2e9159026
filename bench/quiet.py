"""What makes a timing mean something on a shared machine: one benchmark at a time, a machine that is
quiet before each run, the CPU others used during it measured and reported, and repeats summarised by
their median and spread (a 2-core machine shared with a test suite swung last round's ratios 10×)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import statistics
import time
from pathlib import Path
from typing import Iterator

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...; idle and iowait are not busy.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def lock_path() -> Path:
    home = Path(os.path.expanduser(os.environ.get("TURNPACK_HOME", "~/.cache/turnpack")))
    return home / "bench.lock"


@contextlib.contextmanager
def exclusive(wait: bool = False) -> Iterator[None]:
    """Hold the machine-wide benchmark lock; a second benchmark fails at once (or waits, `wait=True`)
    naming the holder, instead of timing the first one's load."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SystemExit(f"error: another benchmark holds {path} ({holder}); run benchmarks one at a time "
                             "(--wait-lock waits for it)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def busy_cpu_seconds() -> float:
    """CPU-seconds all cores have spent busy since boot (every process, this one included)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = 2.0) -> float:
    """How many cores are busy right now, averaged over `seconds` (the load average lags by minutes)."""
    start, begun = busy_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (busy_cpu_seconds() - start) / (time.monotonic() - begun)


def wait_until_quiet(max_cores: float, timeout: float) -> float:
    """Block until fewer than `max_cores` cores are busy (the previous run's tail included); returns the
    last reading. Gives up after `timeout` seconds with an error naming the load."""
    deadline = time.monotonic() + timeout
    while (busy := busy_cores()) > max_cores:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the machine is not quiet: {busy:.2f} cores busy for {timeout:.0f} s "
                             f"(limit --max-busy {max_cores}); stop other jobs, or --max-busy inf to time anyway "
                             "(the table then reports the load)")
        time.sleep(3)
    return busy


class ForeignLoad:
    """CPU the rest of the machine used while one child ran: all busy CPU minus the child's own
    (from its rusage), per second of wall-clock, in cores."""

    def __enter__(self) -> ForeignLoad:
        self._busy, self._start = busy_cpu_seconds(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.busy = busy_cpu_seconds() - self._busy
        self.wall = time.monotonic() - self._start

    def cores(self, child_cpu_seconds: float) -> float:
        return max(0.0, self.busy - child_cpu_seconds) / max(self.wall, 1e-9)


def median_spread(values: list[float]) -> dict[str, float]:
    """Median and the relative spread (max - min) / median of a run's repeats."""
    middle = statistics.median(values)
    return {"median": middle, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / middle if middle else float("nan"), "n": len(values)}
