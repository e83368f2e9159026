"""Checkpoints that standard tools load, and the state that makes resuming exact.

A checkpoint is written under a temporary name and renamed into place, so a crash never
leaves a directory that `resume=auto` would mistake for a complete one.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.pt"
# Prompt learning: peft's adapter file holds the encoder's output (all inference needs), not the
# encoder (P-tuning's MLP, prefix tuning's projection) that resuming must continue training.
ENCODER_FILE = "prompt_encoder.safetensors"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def commit(tmp: Path, directory: Path) -> Path:
    """Replace `directory` by the finished `tmp` in one rename."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def save_checkpoint(directory: Path, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any] | None) -> Path:
    """One process's whole checkpoint, atomically (the loop runs the same steps across ranks)."""
    tmp = staging_dir(directory)
    write_files(tmp, model, tokenizer, state)
    return commit(tmp, directory)


def rank_rng_file(directory: Path, rank: int) -> Path:
    """Ranks other than 0 keep their own RNG streams here (rank 0's is in trainer_state.pt)."""
    return Path(directory) / f"rng_state_rank{rank}.pt"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete `checkpoints/step_<N>` with the highest N (temporary dirs never match)."""
    found = [(int(m.group(1)), p) for p in (Path(output_dir) / "checkpoints").glob("step_*")
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


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
