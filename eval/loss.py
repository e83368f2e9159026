"""Token-weighted language-model loss on packed rows.

The loss is a sum over trained tokens, not a mean per row or per micro-batch, so the
caller can divide by the number of trained tokens of a whole optimizer step (or split).

Only trained positions reach the output head (`LOSS_IMPLS`): `chunked` (default) runs the head and
cross-entropy over `chunk` trained tokens at a time, each chunk checkpointed, so neither the
`[tokens × vocab]` logits nor their fp32 copy exist at once (memory O(chunk × vocab)); `liger` hands the
trained hidden states to Liger's fused linear cross-entropy (CUDA, `pip install liger-kernel`); `full`
is the plain computation: logits for every position, then fp32 cross-entropy.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from data.packing import IGNORE_INDEX
from eval.config import LOSS_IMPLS

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")  # whichever of these the batch carries
DEFAULT_CHUNK = 1024  # trained tokens per head chunk: 1024 × 152k vocab × 4 B = 0.6 GiB of fp32 logits


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices of the positions that carry a label. Computed on the host before the batch moves,
    its length is the trained-token count and indexing with it needs no device sync."""
    return (labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)


def summed_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], impl: str = "chunked",
                      chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over trained tokens, and their count.

    Labels are already shifted per document, so logits and labels line up position by position.
    Packed rows carry `position_ids` and no attention mask: transformers then isolates packed
    documents by their restarting positions. Unpacked rows (methods with virtual tokens) carry an
    `attention_mask` instead. Prompt tuning and P-tuning return logits for their virtual tokens
    first, so only the last T positions are the row's (prefix tuning returns exactly T). No cache.
    `batch["trained_index"]`, when present, is `trained_positions(labels)` made on the host.
    """
    if impl not in LOSS_IMPLS:
        raise ValueError(f"train.loss_impl={impl!r}; allowed: {list(LOSS_IMPLS)}")
    if chunk < 1:
        raise ValueError(f"train.loss_chunk={chunk}: must be at least 1 trained token")
    labels = batch["labels"]
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    trained = batch.get("trained_index")
    if trained is None:
        trained = trained_positions(labels)
    count = trained.shape[0]
    if impl == "full":
        logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1]:]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return loss, count
    hidden, head, softcap = final_hidden_states(model, inputs)
    hidden = hidden[:, -labels.shape[1]:].flatten(0, 1).index_select(0, trained)
    targets = labels.flatten().index_select(0, trained)
    if impl == "liger":
        return liger_cross_entropy(head, hidden, targets, softcap), count
    return chunked_cross_entropy(head, hidden, targets, chunk, softcap), count


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP's or DeepSpeed's engine (both keep it as `.module`)."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    return model


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.nn.Module, float | None]:
    """The hidden states the output head would see, the head, and the model's final logit soft-cap.

    The whole wrapper runs (DDP's and DeepSpeed's forward, peft's virtual tokens, ZeRO-3's weight
    gathering), but a pre-hook on the output head keeps its input and hands the head an empty
    slice, so no logits are made here.
    """
    inner = _unwrapped(model)
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings: use train.loss_impl=full")
    captured = []

    def keep_input(module: torch.nn.Module, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][..., :0, :],) + args[1:]

    handle = head.register_forward_pre_hook(keep_input)
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return captured[0], head, getattr(inner.config, "final_logit_softcapping", None)


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                softcap: float | None) -> torch.Tensor:
    """What the plain computation does to these rows: head, soft-cap (Gemma 2), fp32 cross-entropy."""
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int,
                          softcap: float | None = None) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets`, `chunk` rows at a time.

    Each chunk is checkpointed: backward recomputes its logits instead of keeping them, so at most
    one chunk's logits exist at any time. With no rows it is still a (zero) function of every
    weight, so every rank and engine runs the same backward.
    """
    chunks = max(math.ceil(len(hidden) / chunk), 1)
    zero3 = hasattr(head.weight, "ds_id")
    if zero3 and torch.distributed.is_initialized():
        # ZeRO-3 all-gathers the head's weight at every call: every rank must make as many calls.
        most = torch.tensor(chunks, device=hidden.device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        chunks = int(most)
    # ZeRO-3 also frees the frozen head weight, which the checkpoint saved by reference, after each call
    # (and gathers it again for the recomputation's backward): the saved shape cannot match the recomputed.
    check = "none" if zero3 else "default"
    total = None
    for start in range(0, chunks * chunk, chunk):
        args = (head, hidden[start:start + chunk], targets[start:start + chunk], softcap)
        part = (checkpoint(_chunk_loss, *args, use_reentrant=False, determinism_check=check)
                if torch.is_grad_enabled() else _chunk_loss(*args))
        total = part if total is None else total + part
    return total


def liger_cross_entropy(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                        softcap: float | None = None) -> torch.Tensor:
    """Liger's fused linear cross-entropy (Triton, CUDA only): the head's matmul and the loss in one
    kernel that never holds more than a block of logits."""
    if hidden.device.type != "cuda":
        raise ValueError(f"train.loss_impl=liger runs on CUDA only (this run is on {hidden.device.type}); "
                         f"use train.loss_impl=chunked")
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        raise ValueError("train.loss_impl=liger needs the liger-kernel package (pip install liger-kernel); "
                         "use train.loss_impl=chunked") from None
    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", softcap=softcap)
    return loss_fn(head.weight, hidden, targets, getattr(head, "bias", None))


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> dict[str, float]:
    """Dev/test loss over all trained tokens (and perplexity); `reduce` sums across ranks."""
    was_training = model.training
    model.eval()
    loss_sum, count = torch.zeros((), dtype=torch.float64), 0
    for batch in batches:
        # Labels may have been edited after collation (ZeRO-3's padding batches are): count them anew.
        batch = {k: v for k, v in batch.items() if k != "trained_index"}
        with autocast():
            loss, trained = summed_token_loss(model, batch)
        loss_sum = loss_sum.to(loss.device) + loss.double()  # summed on the device: no sync per batch
        count += trained
    model.train(was_training)
    loss_sum, count = reduce(torch.stack([loss_sum.cpu(), torch.tensor(count, dtype=torch.float64)])).tolist()
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": int(count)}
