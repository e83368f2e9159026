"""bench/quiet.py: what keeps benchmark timings honest on a shared machine."""
import subprocess
import sys
import time

import pytest

from bench.quiet import ForeignLoad, exclusive, median_spread


def test_second_benchmark_is_refused_while_one_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("TURNPACK_HOME", str(tmp_path))
    with exclusive():
        with pytest.raises(SystemExit, match=r"another benchmark holds .*bench\.lock \(pid \d+"):
            with exclusive():
                pass
    with exclusive():  # released: the next one runs
        pass


def test_foreign_load_counts_other_processes_not_the_child():
    spin = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass"
    with ForeignLoad() as others:
        busy = subprocess.Popen([sys.executable, "-c", spin])
        time.sleep(1.6)
        busy.wait()
    assert others.cores(0.0) > 0.5  # the spinning process, seen as someone else's load
    assert others.cores(others.busy) == 0.0  # all of it charged to "the child": nothing foreign


def test_median_and_spread_of_repeats():
    summary = median_spread([100.0, 90.0, 120.0])
    assert summary["median"] == 100.0
    assert summary["spread"] == pytest.approx(0.3)
    assert summary["n"] == 3
