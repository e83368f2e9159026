"""Started by tests/test_faults.py: imports the trainer once, then for each request line on stdin,
`{"overrides": [...], "log": <file>, "env": {...}}`, forks a child that trains as
`launch/train.py overrides...` would (`run_training`, so exit statuses match), its output in `log`.
It prints `pid <child>` and, when the child ends, `exit <status>` (negative: killed by that signal).

Forking skips the seconds of imports a fresh process pays, so a test can kill -9 a run and resume
it many times. Nothing in this process touches torch before forking (no thread pools to inherit).
"""
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import compose  # noqa: E402
from trainer.run import run_training  # noqa: E402


def train_in_child(request: dict) -> int:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(request.get("env", {}))
    try:
        run_training(compose(*request["overrides"]))
        return 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(train_in_child(request))
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
