"""`document_sdpa`: attention for packed rows that never builds an L × L mask.

transformers isolates packed documents with a block-diagonal mask built from the restarting
`position_ids` (sdpa, eager) — on CPU, SDPA with a dense mask falls back to its math kernel and
keeps each layer's `[heads × L × L]` weights for the backward. This implementation instead runs
SDPA once per document of each row with `is_causal=True` (the fused flash kernel on CPU and CUDA;
no mask at all), and concatenates. A sliding-window layer (Gemma 2/3) applies its window within each
document, counted from the document's start: a document longer than the window gets that
document's band mask, a shorter one none. Rows with an attention mask (the one-dialogue-per-row methods
with virtual tokens, and prefix tuning's cache) go to transformers' own SDPA with its mask.

`register()` adds it to transformers' `AttentionInterface` and `AttentionMaskInterface` under
`DOCUMENT_SDPA`, so `model.attn_implementation=document_sdpa` selects it like any built-in one.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

DOCUMENT_SDPA = "document_sdpa"


# One forward hands every layer the same `position_ids` tensor: find its documents once (one host
# sync per forward on CUDA, not one per layer). A weak reference: a freed tensor is never matched.
_last_starts: tuple[weakref.ref, list[list[int]]] | None = None


def document_starts(position_ids: torch.Tensor) -> list[list[int]]:
    """Per row, the offsets where a document begins (its position is 0), and the row's length last."""
    global _last_starts
    if _last_starts is None or _last_starts[0]() is not position_ids:
        starts = (position_ids == 0).cpu()
        starts[:, 0] = True
        _last_starts = (weakref.ref(position_ids),
                        [row.nonzero().flatten().tolist() + [position_ids.shape[-1]] for row in starts])
    return _last_starts[1]


@torch.compiler.disable  # document lengths vary per batch: run eagerly rather than recompile for each
def document_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; `query` is `[batch, heads, L, head_dim]`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError(f"attn_implementation={DOCUMENT_SDPA} does not support softcap (this model uses it); "
                         f"choose sdpa, eager or flex_attention")
    window = kwargs.get("sliding_window")
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    rows = []
    starts = document_starts(position_ids)
    for b, bounds in enumerate(starts * query.shape[0] if len(starts) == 1 else starts):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                           attn_mask=sliding_window_mask(e - s, window, query.device),
                                           dropout_p=dropout, scale=scaling, is_causal=_is_causal(e - s, window),
                                           enable_gqa=gqa)
            for s, e in zip(bounds[:-1], bounds[1:])], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _is_causal(length: int, window: int | None) -> bool:
    return window is None or length <= window


def sliding_window_mask(length: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """The causal band a sliding-window layer (Gemma 2/3, Mistral) allows within one document: key j for
    query i when `i - window < j <= i`, counted from the document's own start (transformers'
    `sliding_window_overlay`); None when the document fits in the window (plain causal attention)."""
    if _is_causal(length, window):
        return None
    i = torch.arange(length, device=device)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


def document_sdpa_mask(attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """The mask transformers builds before the layers: none for packed rows (the documents come from
    `position_ids` in each layer), SDPA's own when there is padding to mask."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make `DOCUMENT_SDPA` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(DOCUMENT_SDPA, document_sdpa_forward)
    AttentionMaskInterface.register(DOCUMENT_SDPA, document_sdpa_mask)
