"""Turns a `ModelConfig` into a tokenizer and a causal LM (the embedded tiny default or a real checkpoint)."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from models.attention import DOCUMENT_SDPA
from models.attention import register as register_document_sdpa
from models.config import DTYPES, GRAD_CKPT_POLICIES, TINY, ModelConfig
from models.gguf import PACKAGED_MODELS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# peft (0.21.2, the newest) still uses two names transformers 5 deprecated: it reads `is_gradient_checkpointing`
# whenever it wraps or reloads a model, and prefix tuning passes `past_key_values` to the model's forward. The
# warnings are about peft's calls, not ours (this project calls the current names).
for _peft_call in ("`is_gradient_checkpointing` is deprecated", "`past_key_values` is deprecated"):
    warnings.filterwarnings("ignore", message=_peft_call, category=FutureWarning)
# A hub id is `name` or `owner/name`; anything else that is not a directory is a (missing) local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_local(path: str) -> bool:
    if path.startswith(("/", ".", "~")) or "\\" in path or not _HUB_ID.match(path):
        return True
    expanded = Path(path).expanduser()
    if expanded.exists():  # e.g. a file where a directory was expected
        return True
    parent = expanded.parent
    return str(parent) not in ("", ".") and parent.is_dir()


def resolve_model_path(cfg: ModelConfig) -> str:
    """`model.path` as something `from_pretrained` accepts: a local directory's absolute path or a hub id.

    `tiny` builds (once) and returns the embedded default; a packaged model (`smollm2`, `gemma3`) and
    `gguf_file` convert (once) a GGUF file into a model directory (models/gguf.py). A path that looks local but is not a
    directory raises `FileNotFoundError` with a one-line message naming it.
    """
    path = cfg.path
    if cfg.gguf_file:
        from models.gguf import gguf_model_dir

        return str(gguf_model_dir(cfg.gguf_file))
    if path == TINY:
        from models.tiny import materialize_tiny

        return str(materialize_tiny())
    if path in PACKAGED_MODELS:
        from models.gguf import packaged_model_dir

        return str(packaged_model_dir(PACKAGED_MODELS[path]))
    expanded = Path(os.path.expanduser(path))
    if expanded.is_dir():
        return str(expanded.resolve())
    if _looks_local(path):
        what = "is not a directory" if expanded.exists() else "does not exist"
        raise FileNotFoundError(
            f"model.path={path}: {what} (looked at {expanded.absolute()}); "
            f"allowed: a local model directory, a hub id like 'Qwen/Qwen2.5-0.5B-Instruct', {TINY!r} or one of "
            f"{', '.join(map(repr, PACKAGED_MODELS))}"
        )
    return path


def load_tokenizer(cfg: ModelConfig):
    """`AutoTokenizer` for `cfg`; pad token falls back to eos when the checkpoint has none."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg)
    check_tokenizer_files(path)
    tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def check_model_files(path: str) -> None:
    """A local directory to train or evaluate must hold a model: config.json and a tokenizer."""
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"model.path={path}: holds no model (looked for config.json there); "
                                f"allowed: a model directory, a hub id, {TINY!r} or one of "
                                f"{', '.join(map(repr, PACKAGED_MODELS))}")
    check_tokenizer_files(path)


def check_tokenizer_files(path: str) -> None:
    """A local model directory must carry a tokenizer; without one transformers' only word is about
    converting a slow tokenizer (sentencepiece / tiktoken), which names neither the directory nor the cause."""
    if Path(path).is_dir() and not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"model.path={path}: has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); "
                                "allowed: a model directory saved with its tokenizer (save_pretrained)")


def torch_dtype(name: str, key: str = "model.dtype"):
    """The torch dtype called `name`; `key` names the setting in the error."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"{key} {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_model(cfg: ModelConfig, *, device=None, quantization=None):
    """`AutoModelForCausalLM` for `cfg`, in `cfg.dtype`, with the KV cache off (training), on `device`.

    `quantization` (a transformers quantization config, e.g. the 4-bit bitsandbytes one
    `models.adapters.quantization_config` gives qlora) quantises the weights as they load, straight
    onto `device`; unquantised weights load on the CPU and move (DeepSpeed ZeRO-3 allows no device_map).
    """
    from transformers import AutoModelForCausalLM

    if cfg.attn_implementation == DOCUMENT_SDPA:
        register_document_sdpa()
    quantized = quantization is not None
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg),
        revision=cfg.revision,
        dtype=torch_dtype(cfg.dtype),  # transformers 5 name (`torch_dtype` is the deprecated alias)
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        quantization_config=quantization,
        device_map={"": device} if quantized and device is not None else None,
    )
    model.config.use_cache = False
    if device is not None and not quantized:
        model.to(device)
    if quantized:
        keep_4bit_layout_on_cpu(model)
    return model


def keep_4bit_layout_on_cpu(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights in place for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes (0.49, 0.50) rewrites each `Linear4bit` weight into another
    layout the first time it runs in eval mode without gradients, which fails for output sizes not divisible
    by 32 (the tiny model's MLP has 688) and leaves a layer that trains and saves differently after an
    evaluation. The loop alternates training and evaluation, so the layout stays the one training uses.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def enable_activation_checkpointing(model, policy: str = "full", every: int = 1) -> None:
    """Recompute decoder layers in the backward (non-reentrant, so frozen inputs still get gradients).

    `policy="full"` keeps only each checkpointed layer's input; `"selective"` also keeps what is costly to
    recompute — matmul and attention outputs — and reruns only the elementwise ops (torch's selective
    checkpoint contexts, torchtitan's op-level policy). `every=k` checkpoints layers 0, k, 2k, ...; the others
    keep all their activations (transformers' `every_n_layers`). transformers 5.x renamed
    `gradient_checkpointing_enable` to `activation_checkpointing_enable`; the old name warns, so the new one is
    used where it exists.
    """
    if policy not in GRAD_CKPT_POLICIES:
        raise ValueError(f"train.grad_ckpt_policy={policy!r}; allowed: {list(GRAD_CKPT_POLICIES)}")
    kwargs = {"use_reentrant": False}
    if policy == "selective":
        kwargs["context_fn"] = selective_checkpoint_contexts
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, every_n_layers=every)
    model.enable_input_require_grads()


# Matmuls whose reduction is at most this long are cheap to rerun (LoRA's up-projection reduces over the rank).
CHEAP_REDUCTION = 128
_ATTENTION_KERNELS = tuple(getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"))
_MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)  # linear layers (bmm: attention scores)


def _keep_costly_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Save what costs FLOPs to recompute: fused attention, and linear layers' matmuls that reduce over more
    than `CHEAP_REDUCTION` (the base weights; LoRA's rank-r up-projection is rerun). Everything else reruns,
    masked attention's score matrices included."""
    if op in _ATTENTION_KERNELS:
        return CheckpointPolicy.MUST_SAVE
    if op in _MATMULS:
        left = args[1] if op is torch.ops.aten.addmm.default else args[0]
        if left.shape[-1] > CHEAP_REDUCTION:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint_contexts():
    """Contexts for `torch.utils.checkpoint.checkpoint(context_fn=...)`: the selective policy."""
    return create_selective_checkpoint_contexts(_keep_costly_outputs)
