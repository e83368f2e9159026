"""Checkpoints that standard tools load, and the state that makes resuming exact.

A checkpoint is written under a temporary name, fsync'ed and renamed into place, so a crash
never leaves a directory that `resume=auto` would mistake for a complete one; `resume=auto`
also checks that what it resumes from reads back, and skips what does not.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.pt"
# Prompt learning: peft's adapter file holds the encoder's output (all inference needs), not the
# encoder (P-tuning's MLP, prefix tuning's projection) that resuming must continue training.
ENCODER_FILE = "prompt_encoder.safetensors"
DCP_DIR = "dcp"  # FSDP engines: every rank's shard of the trainable weights and optimizer state (torch DCP)
_STEP_DIR = re.compile(r"^step_(\d+)$")
# While `commit` replaces a directory, the old one waits under this name (restored if the new one never lands).
_BACKUP_DIR = re.compile(r"^\.step_(\d+)\.old$")
_STAGING_DIR = re.compile(r"^\..+\.tmp$")


class CorruptCheckpoint(ValueError):
    """A checkpoint directory that is incomplete or does not read back."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_dir(directory: Path, create: bool = True) -> Path:
    """The temporary directory a checkpoint is written into before `commit` renames it
    (made empty when `create`). Its name is the same on every rank, so the ranks of one job
    write their shards side by side; one rank creates it."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def write_files(tmp: Path, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any] | None,
                weights: dict[str, torch.Tensor] | None = None) -> None:
    """Weights (adapter or full, safetensors), tokenizer and, if given, training state.

    `weights` replaces the module's own state dict (ZeRO-3 gathers it from the shards).
    """
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
    if isinstance(model, PeftModel) and model.active_peft_config.is_prompt_learning:
        save_file(model.prompt_encoder.state_dict(), tmp / ENCODER_FILE)
    tokenizer.save_pretrained(tmp)
    if state is not None:
        torch.save(state, tmp / STATE_FILE)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, directory: Path) -> Path:
    """Make the finished `tmp` durable (every file, then the directories) and rename it to `directory`.

    An existing `directory` is first renamed to `.<name>.old` and deleted only once the new one is in
    place, so a crash at any moment leaves the old or the new one (`latest_checkpoint` finds either).
    """
    directory, tmp = Path(directory), Path(tmp)
    for root, _, files in os.walk(tmp):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))
    backup = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(directory, backup)
    os.replace(tmp, directory)
    _fsync(directory.parent)
    shutil.rmtree(backup, ignore_errors=True)
    return directory


def save_checkpoint(directory: Path, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any] | None) -> Path:
    """One process's whole checkpoint, atomically (the loop runs the same steps across ranks)."""
    tmp = staging_dir(directory)
    write_files(tmp, model, tokenizer, state)
    return commit(tmp, directory)


def rank_rng_file(directory: Path, rank: int) -> Path:
    """Ranks other than 0 keep their own RNG streams here (rank 0's is in trainer_state.pt)."""
    return Path(directory) / f"rng_state_rank{rank}.pt"


def step_dirs(checkpoints: Path) -> list[tuple[int, Path]]:
    """Committed `step_<N>` directories, and `.step_<N>.old` ones a crash left mid-replacement
    (where `step_<N>` is missing), newest first."""
    checkpoints = Path(checkpoints)
    found = {}
    for path in checkpoints.glob("*step_*"):
        if m := _STEP_DIR.match(path.name):
            found[int(m.group(1))] = path
    for path in checkpoints.glob(".step_*.old"):
        if (m := _BACKUP_DIR.match(path.name)) and int(m.group(1)) not in found:
            found[int(m.group(1))] = path
    return sorted(found.items(), reverse=True)


def latest_checkpoint(output_dir: Path, warn: Callable[[str], None] = print,
                      remove_unfinished: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint under `<output_dir>/checkpoints` that reads back, with its training state.

    Each directory skipped (incomplete or corrupt) and each unfinished write (a `.*.tmp` staging
    directory, deleted when `remove_unfinished`) gets one `warn` line naming the file.
    """
    checkpoints = Path(output_dir) / "checkpoints"
    for path in sorted(checkpoints.glob(".*.tmp")):
        if _STAGING_DIR.match(path.name) and path.is_dir():
            warn(f"resume=auto: skipping {path}: an unfinished checkpoint write"
                 + (" (removed)" if remove_unfinished else ""))
            if remove_unfinished:
                shutil.rmtree(path, ignore_errors=True)
    for _, path in step_dirs(checkpoints):
        try:
            return path, load_valid_state(path)
        except CorruptCheckpoint as err:
            warn(f"resume=auto: skipping {err}")
    return None


def load_valid_state(directory: Path) -> dict[str, Any]:
    """The checkpoint's training state, after checking that every file it needs reads back:
    `trainer_state.pt` and the ranks' RNG files load (weights_only), every safetensors file's header
    covers the file exactly, every JSON parses, DeepSpeed's shards are whole zip archives and DCP's
    (FSDP) shards hold every byte their metadata points to.
    Raises `CorruptCheckpoint` naming the first bad file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorruptCheckpoint(f"{directory}: no such checkpoint directory")
    state_file = directory / STATE_FILE
    if not state_file.is_file():
        raise CorruptCheckpoint(f"{state_file}: missing (not a complete checkpoint)")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise CorruptCheckpoint(f"{directory}: no *.safetensors weights")
    for path in weights:
        try:
            with safe_open(path, framework="pt"):
                pass
        except Exception as err:  # safetensors reports truncation and bad headers as SafetensorError
            raise CorruptCheckpoint(f"{path}: unreadable safetensors ({err})") from None
    for path in sorted(directory.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CorruptCheckpoint(f"{path}: unreadable JSON ({err})") from None
    for path in sorted((directory / "deepspeed").rglob("*.pt")):
        try:
            zipfile.ZipFile(path).close()
        except (OSError, zipfile.BadZipFile) as err:
            raise CorruptCheckpoint(f"{path}: unreadable DeepSpeed shard ({err})") from None
    if (directory / DCP_DIR).is_dir():
        check_dcp(directory / DCP_DIR)
    for path in sorted(directory.glob("rng_state_rank*.pt")):
        _load_pt(path)
    state = _load_pt(state_file)
    if not isinstance(state, dict) or "step" not in state:
        raise CorruptCheckpoint(f"{state_file}: not a training state (no 'step')")
    return state


def check_dcp(directory: Path) -> None:
    """A torch.distributed.checkpoint directory reads back: its `.metadata` loads, and every shard file
    it names is at least as long as the last byte range read from it (a truncated or missing shard
    fails here, not in the middle of a collective load)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(directory).read_metadata()
    except Exception as err:  # missing or truncated pickle
        raise CorruptCheckpoint(f"{directory / '.metadata'}: unreadable DCP metadata "
                                f"({type(err).__name__}: {err})") from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = directory / name
        have = path.stat().st_size if path.is_file() else -1
        if have < size:
            raise CorruptCheckpoint(f"{path}: truncated DCP shard ({'missing' if have < 0 else f'{have} bytes'}, "
                                    f"its metadata reads up to byte {size})")


def _load_pt(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle: torch raises RuntimeError, EOFError, UnpicklingError
        raise CorruptCheckpoint(f"{path}: unreadable ({type(err).__name__}: {err})") from None


def prune(checkpoints: Path, keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` step directories, never `keep` (the one the run resumed
    from). Each goes by first renaming it to a staging name, so a crash mid-delete leaves an
    unfinished write that `latest_checkpoint` skips, never a half-deleted checkpoint."""
    removed = []
    for _, path in step_dirs(checkpoints)[keep_last:]:
        if keep is not None and path.resolve() == Path(keep).resolve():
            continue
        doomed = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed)
        removed.append(path)
    return removed


def estimated_size(model_path: str, full: bool, dtype_bytes: int) -> int:
    """Bytes one checkpoint takes, estimated before the model is loaded from the base's safetensors
    headers: the trainable weights and two Adam moments each (`dtype_bytes` per value), trainable
    being every parameter for full fine-tuning and 1% of them for adapters. 0 when the base is not a
    local directory (a hub id)."""
    directory = Path(model_path)
    params = 0
    for path in directory.glob("*.safetensors") if directory.is_dir() else []:
        with safe_open(path, framework="pt") as f:
            params += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    trainable = params if full else params // 100
    return 3 * trainable * dtype_bytes


def preflight(output_dir: Path, needed: int) -> None:
    """Fail early, with the reason, when `output_dir` cannot be written or its disk has less free
    space than `needed` bytes (one checkpoint)."""
    output_dir = Path(output_dir)
    probe = output_dir / f".write_test.{uuid.uuid4().hex}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output_dir={output_dir} cannot be written: {err.strerror or err}") from None
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise ValueError(f"output_dir={output_dir}: {free / 2**30:.2f} GiB free on its disk, less than one "
                      f"checkpoint (estimated {needed / 2**30:.2f} GiB)")


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load the weights a checkpoint saved back into the live (possibly adapted) model."""
    directory = Path(directory)
    if isinstance(model, PeftModel) and (directory / ENCODER_FILE).is_file():
        model.prompt_encoder.load_state_dict(load_file(directory / ENCODER_FILE))
        return
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise ValueError(f"{directory}: adapter weights do not match the model: {result.unexpected_keys[:5]}")
        return
    state = {}
    for shard in sorted(directory.glob("model*.safetensors")):
        state.update(load_file(shard))
    if not state:
        raise FileNotFoundError(f"{directory}: no model*.safetensors to resume from")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise ValueError(f"{directory}: weights do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")


def load_state(directory: Path) -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
