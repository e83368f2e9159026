"""Model directories the project builds itself (the tiny default, GGUF conversions) under `$TURNPACK_HOME`.

Each is a standard Hugging Face directory, so `from_pretrained` and an adapter's
`base_model_name_or_path` work exactly as with a downloaded checkpoint.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

COMPLETE = "config.json"  # written by save_pretrained; a directory without it is not a model


def turnpack_home() -> Path:
    """`$TURNPACK_HOME`, default `~/.cache/turnpack`."""
    return Path(os.environ.get("TURNPACK_HOME") or Path.home() / ".cache" / "turnpack").expanduser()


def models_root(root: Path | None = None) -> Path:
    return (Path(root) if root is not None else turnpack_home() / "models").expanduser().resolve()


def build_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Return `target`, first calling `write(tmp)` and renaming `tmp` into place if it is not built yet.

    The temporary directory sits next to the target, so a concurrent builder (several ranks, two
    test workers) never sees or leaves a half-written model: the first rename wins, the others are discarded.
    """
    if (target / COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / COMPLETE).is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
