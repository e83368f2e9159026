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


MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")  # whichever of these the batch carries


def summed_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over trained tokens, and their count.

    Labels are already shifted per document, so logits and labels line up position by position.
    Packed rows carry `position_ids` and no attention mask: transformers then isolates packed
    documents by their restarting positions. Unpacked rows (methods with virtual tokens) carry an
    `attention_mask` instead. Prompt tuning and P-tuning return logits for their virtual tokens
    first, so only the last T positions are the row's (prefix tuning returns exactly T). No cache.
    """
    labels = batch["labels"]
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1]:]
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
