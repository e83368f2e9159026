"""Parameter-efficient fine-tuning: which weights train, and what each method asks of the run.

`PEFT_METHODS` maps `peft.method` to a `PeftMethod`: the HF `peft` config it trains with (None: full
fine-tuning) and the facts the rest of the run acts on — whether packed documents stay isolated,
whether gradient checkpointing works, whether the frozen base is loaded in 4-bit. A new method is one
more entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from torch import nn

from models.config import QUANT_TYPES, ModelConfig, PeftConfig
from models.loading import torch_dtype

if TYPE_CHECKING:
    import peft
    from transformers import BitsAndBytesConfig



@dataclass(frozen=True)
class PeftMethod:
    # (peft_cfg, model_cfg, base model) -> the `peft` config to wrap the base with; None: full fine-tuning
    config: Optional[Callable[[PeftConfig, ModelConfig, nn.Module], "peft.PeftConfig"]]
    # Documents may share a row. False: virtual tokens sit in front of a whole row, so every packed
    # document would attend to the others through them; such methods train one dialogue per row.
    packs: bool = True
    grad_ckpt: bool = True  # trains with train.grad_ckpt=true
    quantized: bool = False  # the frozen base is loaded in 4-bit (see `quantization_config`)


def _target_modules(peft_cfg: PeftConfig, model_cfg: ModelConfig) -> list[str] | str:
    targets = peft_cfg.target_modules if peft_cfg.target_modules is not None else model_cfg.lora_target_modules
    targets = list(targets)
    if targets == ["all-linear"]:
        return "all-linear"  # peft: every linear layer except the output head
    if not targets:
        raise ValueError("peft.target_modules is empty: name the modules to adapt, or use ['all-linear']")
    return targets


def _lora(peft_cfg: PeftConfig, model_cfg: ModelConfig, model: nn.Module, use_dora: bool = False):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
                      target_modules=_target_modules(peft_cfg, model_cfg), use_dora=use_dora)


def _dora(peft_cfg: PeftConfig, model_cfg: ModelConfig, model: nn.Module):
    """LoRA on the direction of each weight plus a trained per-output-channel magnitude."""
    return _lora(peft_cfg, model_cfg, model, use_dora=True)


def _ia3(peft_cfg: PeftConfig, model_cfg: ModelConfig, model: nn.Module):
    """Learned vectors that rescale the targets' outputs (the feed-forward ones' inputs)."""
    from peft import IA3Config

    targets = _target_modules(peft_cfg, model_cfg)
    stray = [m for m in peft_cfg.feedforward_modules if targets != "all-linear" and m not in targets]
    if stray:
        raise ValueError(f"peft.feedforward_modules {stray} are not in peft.target_modules {targets}")
    return IA3Config(task_type="CAUSAL_LM", target_modules=targets,
                     feedforward_modules=list(peft_cfg.feedforward_modules))


def _prompt_tuning(peft_cfg: PeftConfig, model_cfg: ModelConfig, model: nn.Module):
    """`num_virtual_tokens` trained input embeddings in front of every row."""
    from peft import PromptTuningConfig

    init = ({"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": peft_cfg.prompt_init_text,
             "tokenizer_name_or_path": model.name_or_path} if peft_cfg.prompt_init_text else {})
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft_cfg.num_virtual_tokens, **init)


def _encoder_width(peft_cfg: PeftConfig, model: nn.Module) -> int:
    return peft_cfg.encoder_hidden_size or model.config.hidden_size


def _p_tuning(peft_cfg: PeftConfig, model_cfg: ModelConfig, model: nn.Module):
    """Virtual input embeddings produced by a trained MLP (the prompt encoder)."""
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft_cfg.num_virtual_tokens,
                               encoder_hidden_size=_encoder_width(peft_cfg, model))


def _prefix_tuning(peft_cfg: PeftConfig, model_cfg: ModelConfig, model: nn.Module):
    """Trained keys and values for `num_virtual_tokens` positions in every layer."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=peft_cfg.num_virtual_tokens,
                              prefix_projection=peft_cfg.prefix_projection,
                              encoder_hidden_size=_encoder_width(peft_cfg, model))


PEFT_METHODS: dict[str, PeftMethod] = {
    "none": PeftMethod(None),  # full fine-tuning: every parameter trains, model returned as is
    "lora": PeftMethod(_lora),
    "dora": PeftMethod(_dora),
    "qlora": PeftMethod(_lora, quantized=True),  # LoRA on a 4-bit NF4 base
    "ia3": PeftMethod(_ia3),
    "prompt_tuning": PeftMethod(_prompt_tuning, packs=False),
    "p_tuning": PeftMethod(_p_tuning, packs=False),
    # peft passes the prefix as a key/value cache, which gradient checkpointing does not support
    "prefix_tuning": PeftMethod(_prefix_tuning, packs=False, grad_ckpt=False),
}


def peft_method(peft_cfg: PeftConfig, grad_ckpt: bool = False) -> PeftMethod:
    """The table entry for `peft.method`; an unknown name, or a combination the method cannot train,
    fails here, before any data or model is loaded."""
    try:
        method = PEFT_METHODS[peft_cfg.method]
    except KeyError:
        raise ValueError(
            f"peft.method {peft_cfg.method!r} is not supported; choose one of: {', '.join(PEFT_METHODS)}"
        ) from None
    if grad_ckpt and not method.grad_ckpt:
        raise ValueError(
            f"peft={peft_cfg.method} cannot be combined with train.grad_ckpt=true: peft feeds the prefix to every "
            f"layer as a key/value cache, which gradient checkpointing does not support; set train.grad_ckpt=false "
            f"or choose another peft method"
        )
    return method


def unpacked_note(peft_cfg: PeftConfig) -> str:
    """The log line saying why a method that does not pack trains one dialogue per row."""
    return (f"peft={peft_cfg.method}: virtual tokens are per row, so dialogues are not packed "
            f"(one per row, right-padded)")


def quantization_config(peft_cfg: PeftConfig) -> Optional["BitsAndBytesConfig"]:
    """What `load_model` needs to load the base for `peft_cfg`: 4-bit bitsandbytes for qlora, else None."""
    if not peft_method(peft_cfg).quantized:
        return None
    from transformers import BitsAndBytesConfig

    if peft_cfg.quant_type not in QUANT_TYPES:
        raise ValueError(f"peft.quant_type {peft_cfg.quant_type!r} is not one of {', '.join(QUANT_TYPES)}")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=peft_cfg.quant_type,
        bnb_4bit_use_double_quant=peft_cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(peft_cfg.compute_dtype, "peft.compute_dtype"),
    )


def apply_peft(model: nn.Module, peft_cfg: PeftConfig, model_cfg: ModelConfig) -> nn.Module:
    """Wrap `model` according to `peft_cfg.method`; see `PEFT_METHODS`."""
    method = peft_method(peft_cfg)
    if method.config is None:
        return model.requires_grad_(True)
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method.quantized:
        if not getattr(model, "is_loaded_in_4bit", False):
            raise ValueError(f"peft={peft_cfg.method} needs the base loaded in 4-bit: "
                             f"load_model(..., quantization=quantization_config(peft_cfg))")
        # Freezes the base and upcasts its unquantised weights (norms, embeddings) to fp32. Gradient
        # checkpointing is the loop's business (train.grad_ckpt), so it is not switched on here.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, method.config(peft_cfg, model_cfg, model))


def _numel(p: nn.Parameter) -> int:
    n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()  # DeepSpeed ZeRO-3 keeps a stub
    if p.__class__.__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte
        n *= 2
    return n


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    trainable = total = 0
    for p in model.parameters():
        n = _numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def describe_parameters(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {pct:.2f}"
