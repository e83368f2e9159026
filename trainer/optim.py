"""Optimizers the `optim` group names."""
from __future__ import annotations

import torch
from omegaconf import DictConfig


def build_optimizer(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D tensors) are not decayed."""
    if cfg.name != "adamw":
        raise ValueError(f"optim.name={cfg.name!r}; allowed: ['adamw']")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=device.type == "cuda")
