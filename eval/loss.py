"""Token-weighted language-model loss on packed rows.

The loss is a sum over trained tokens, not a mean per row or per micro-batch, so the
caller can divide by the number of trained tokens of a whole optimizer step (or split).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from data.packing import IGNORE_INDEX


def summed_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over trained tokens, and their count.

    Labels are already shifted per document, so logits and labels line up position by
    position. No attention mask and no cache: transformers then isolates packed documents
    by their restarting `position_ids`.
    """
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """Dev/test loss over all trained tokens (and perplexity); `reduce` sums across ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        with autocast():
            loss, count = summed_token_loss(model, batch)
        total += torch.tensor([loss.item(), count], dtype=torch.float64)
    model.train(was_training)
    loss_sum, count = reduce(total).tolist()
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": int(count)}
