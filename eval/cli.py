"""What the entry points share: the command line's overrides, the config checked before Hydra starts,
and user errors as one line."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Callable, Iterator, Sequence

from omegaconf import DictConfig

from data.errors import DataError

# Problems with what the user gave (a bad line, a missing path, a value outside its allowed set).
USER_ERRORS = (DataError, FileNotFoundError, ValueError)


def cli_overrides() -> list[str]:
    """The `key=value` overrides Hydra received for this job (none outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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


def check_command_line(config_dir: str, config_name: str, argv: Sequence[str],
                       check: Callable[[DictConfig, list[str]], object]) -> None:
    """Compose the config the command line asks for and `check(cfg, overrides)` it, before Hydra makes a
    run directory or writes anything: a bad override, group choice or value exits with one `error:` line
    and status 2. Hydra's own flags (`--help`, `--cfg`, `-m`) and sweeps are left to Hydra (a multirun's
    jobs check their own config)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(arg.startswith("-") for arg in argv):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(list(argv))
    except HydraException:  # Hydra reports a malformed override in its words
        return
    if any(o.is_sweep_override() for o in parsed):
        return
    overrides = [o.input_line for o in parsed if o.key_or_group.split(".")[0].split("/")[0] != "hydra"]
    with exit_on_user_error():
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            try:
                cfg = compose(config_name=config_name, overrides=overrides)
            except HydraException as err:
                raise ValueError(hydra_error_line(err, parsed)) from None
        check(cfg, overrides)


def hydra_error_line(err: Exception, parsed: Sequence) -> str:
    """Hydra's composition error as `<override>: <why>; allowed: <what>` (its own text is several lines)."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.options:
        group = err.missing_cfg_file.rpartition("/")[0]
        given = next((o.input_line for o in parsed if o.key_or_group == group), err.missing_cfg_file)
        return f"{given}: no such config in conf/{group}; allowed: {', '.join(err.options)}"
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    given = next((o.input_line for o in parsed if key and o.key_or_group.lstrip("+~") == key), None)
    if cause is None or given is None:
        return " ".join(str(err).split())
    why = str(cause).splitlines()[0]
    schema = getattr(cause, "object_type", None)
    fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    name = key.rpartition(".")[2]
    if name in fields:
        return f"{given}: {why}; allowed: a value of type {fields[name].type}"
    return f"{given}: unknown key; allowed: {', '.join(fields) or 'the keys --cfg job lists'}"
