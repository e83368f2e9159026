"""The embedded default model: a few-million-parameter Qwen2 with the project's own tokenizer.

Nothing is downloaded. `materialize_tiny()` writes, the first time, a standard Hugging Face model
directory (config.json, generation_config.json, model.safetensors, tokenizer files) with weights from a
fixed seed, and returns its absolute path, so `from_pretrained` and an adapter's
`base_model_name_or_path` work exactly as with a real checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.model_dirs import build_once, models_root

TOKENIZER_ASSETS = Path(__file__).resolve().parent / "assets" / "tiny_tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SEED = 0
# Bump when the way the weights are produced changes, so old directories are not reused.
_BUILD_VERSION = "1"

# Weight init draws from torch's global RNG: builders in one process take turns so seeds do not interleave.
_INIT_LOCK = threading.Lock()

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

# Everything but the token ids, which come from the tokenizer.
_ARCH: dict[str, Any] = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    initializer_range=0.02,
    tie_word_embeddings=True,
    use_sliding_window=False,
)


@lru_cache(maxsize=None)
def _token_ids(tokenizer_json: Path = TOKENIZER_ASSETS / "tokenizer.json") -> tuple[int, dict[str, int]]:
    """(vocab size incl. added tokens, {added token: id}) read straight from tokenizer.json."""
    if not tokenizer_json.is_file():
        raise FileNotFoundError(
            f"embedded tokenizer missing: {tokenizer_json} (rebuild it with `python -m models.build_tokenizer`)"
        )
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    ids = list(data["model"]["vocab"].values()) + list(added.values())
    return max(ids) + 1, added


def tiny_config():
    """A fresh `Qwen2Config` for the embedded model (vocab and special ids from the tokenizer assets)."""
    from transformers import Qwen2Config

    vocab_size, added = _token_ids()
    return Qwen2Config(
        vocab_size=vocab_size,
        bos_token_id=added[PAD_TOKEN],  # as in Qwen2: no bos is prepended; the id is <|endoftext|>
        eos_token_id=added[EOS_TOKEN],
        pad_token_id=added[PAD_TOKEN],
        dtype="float32",
        **_ARCH,
    )


@lru_cache(maxsize=None)
def _tiny_config_constant():
    return tiny_config()


def __getattr__(name: str):  # lazy module constant: importing this module reads no files
    if name == "TINY_CONFIG":
        return _tiny_config_constant()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tiny_fingerprint() -> str:
    """Short hash of the architecture, token ids, tokenizer files, seed and build version."""
    vocab_size, added = _token_ids()
    h = hashlib.sha256()
    spec = {"arch": _ARCH, "vocab_size": vocab_size, "added": added, "seed": SEED, "build": _BUILD_VERSION}
    h.update(json.dumps(spec, sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        h.update(name.encode() + b"\0" + (TOKENIZER_ASSETS / name).read_bytes() + b"\0")
    return h.hexdigest()[:12]


def materialize_tiny(root: Path | None = None) -> Path:
    """Build the embedded model directory if it is not there yet; return its absolute path.

    `root` is the directory that holds model directories (default `$TURNPACK_HOME/models`); the model
    lands in `root/tiny-qwen2-<fingerprint>`. It is written to a temporary directory next to it and
    renamed into place, so a concurrent builder never sees (or leaves) a half-written directory.
    """
    return build_once(models_root(root) / f"tiny-qwen2-{tiny_fingerprint()}", _write_model_dir)


def _write_model_dir(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    config = tiny_config()
    with _INIT_LOCK:
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SEED)
                model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous_dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_ASSETS / name, out / name)
