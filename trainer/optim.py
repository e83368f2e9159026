"""Optimizers the `optim` group names: torch AdamW and bitsandbytes' 8-bit and paged AdamW.

`OPTIMIZERS` maps `optim.name` to a builder `(param_groups, cfg, device) -> Optimizer`; every builder gets
the same decay/no-decay groups, so the choice changes only how Adam's moments are stored.

What bitsandbytes (0.50) does, checked on CPU:

- `AdamW8bit` keeps both moments as uint8 (blockwise dynamic quantisation: a float32 absmax per 256
  elements), ~2 bytes per parameter instead of 8. Tensors under 4096 elements (bitsandbytes'
  `min_8bit_size`: biases, norms, small LoRA factors) keep float32 moments.
- Paged variants allocate the moments in CUDA unified memory so the driver can evict them to host RAM
  when the GPU runs out, instead of failing with an out-of-memory error. On CPU there is nothing to page:
  bitsandbytes itself warns at the first step ("Paged optimizers are not supported on CPU. Falling back
  to non-paged optimizer behavior.") and allocates ordinary tensors. We build the unpaged class
  outright instead and warn once when the optimizer is built, so the log names what actually runs.
- `state_dict()` nests the quantisation tensors (state1/2, qmap1/2, absmax1/2) under
  `"__bnb_optimizer_quant_state__"`; it holds only tensors, ints, floats and None, so `trainer_state.pt`
  loads with `torch.load(weights_only=True)` as is, and `load_state_dict` unwraps it again without
  casting the uint8 or float32 states to the parameter dtype.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from omegaconf import DictConfig

Builder = Callable[[list[dict[str, Any]], DictConfig, torch.device], torch.optim.Optimizer]


def _torch_adamw(groups: list[dict[str, Any]], cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=device.type == "cuda")


def _bitsandbytes(unpaged: str, paged: str | None = None) -> Builder:
    """Builder for `bitsandbytes.optim.<paged>` on CUDA, `<unpaged>` elsewhere (with a warning)."""

    def build(groups: list[dict[str, Any]], cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
        import bitsandbytes as bnb

        name = unpaged
        if paged is not None and device.type == "cuda":
            name = paged
        elif paged is not None:
            warnings.warn(f"optim.name={cfg.name}: paging needs CUDA unified memory; on {device.type} using "
                          f"bitsandbytes.optim.{unpaged} (same update, unpaged state)", stacklevel=3)
        return getattr(bnb.optim, name)(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                        weight_decay=cfg.weight_decay)

    return build


OPTIMIZERS: dict[str, Builder] = {
    "adamw": _torch_adamw,  # fused kernel on CUDA; moments in the parameter dtype
    "adamw_8bit": _bitsandbytes("AdamW8bit"),
    "paged_adamw_8bit": _bitsandbytes("AdamW8bit", paged="PagedAdamW8bit"),
    "paged_adamw_32bit": _bitsandbytes("AdamW32bit", paged="PagedAdamW32bit"),
}


def build_optimizer(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """`OPTIMIZERS[cfg.name]`; biases and norm weights (1-D tensors) are not decayed."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={cfg.name!r}; allowed: {list(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return OPTIMIZERS[cfg.name]([g for g in groups if g["params"]], cfg, device)
