"""Parameter-efficient fine-tuning: which weights train.

`PEFT_METHODS` maps `peft.method` to a builder `(model, peft_cfg, model_cfg) -> model`; a new method
(dora, ia3, prompt tuning, qlora, ...) is one more entry.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.config import ModelConfig, PeftConfig


def _target_modules(peft_cfg: PeftConfig, model_cfg: ModelConfig) -> list[str] | str:
    targets = peft_cfg.target_modules if peft_cfg.target_modules is not None else model_cfg.lora_target_modules
    targets = list(targets)
    if targets == ["all-linear"]:
        return "all-linear"  # peft: every linear layer except the output head
    if not targets:
        raise ValueError("peft.target_modules is empty: name the modules to adapt, or use ['all-linear']")
    return targets


def _full(model: nn.Module, peft_cfg: PeftConfig, model_cfg: ModelConfig) -> nn.Module:
    model.requires_grad_(True)
    return model


def _lora(model: nn.Module, peft_cfg: PeftConfig, model_cfg: ModelConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules=_target_modules(peft_cfg, model_cfg),
    )
    return get_peft_model(model, config)


PEFT_METHODS: dict[str, Callable[[nn.Module, PeftConfig, ModelConfig], nn.Module]] = {
    "none": _full,  # full fine-tuning: every parameter trains, model returned as is
    "lora": _lora,
}


def apply_peft(model: nn.Module, peft_cfg: PeftConfig, model_cfg: ModelConfig) -> nn.Module:
    """Wrap `model` according to `peft_cfg.method`; see `PEFT_METHODS`."""
    try:
        builder = PEFT_METHODS[peft_cfg.method]
    except KeyError:
        raise ValueError(
            f"peft.method {peft_cfg.method!r} is not supported; choose one of: {', '.join(PEFT_METHODS)}"
        ) from None
    return builder(model, peft_cfg, model_cfg)


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
