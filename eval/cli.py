"""What the entry points share: the command line's overrides, and user errors as one line."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from data.errors import DataError

# Problems with what the user gave (a bad line, a missing path, a value outside its allowed set).
USER_ERRORS = (DataError, FileNotFoundError, ValueError)


def cli_overrides() -> list[str]:
    """The `key=value` overrides Hydra received for this job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """A user error prints `error: ...` and exits with status 2; HYDRA_FULL_ERROR=1 shows the traceback."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
