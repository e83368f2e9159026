"""Conversation → samples: token ids plus a per-token "is trained" flag.

A sample is rendered to one string and tokenised once, so training sees exactly the
tokens inference sees; which tokens carry loss comes from the template's body pieces
mapped through the tokenizer's character offsets. `data.multi_turn` picks the samples:
`one_pass` (one sample per dialogue, every trained turn in it) or `per_turn` (one sample
per trained turn: the history as prompt, that turn as the only target — seed 000's
ChatGLM2 way). A dialogue that the template does not render prefix-stably (see
`data.templates.NotPrefixStable`) is trained per turn whatever the setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from data.config import MULTI_TURN
from data.conversation import TRAINABLE_KINDS, Conversation, Message
from data.errors import DataError
from data.templates import ChatTemplate, NotPrefixStable, Piece


@dataclass
class EncodedDialogue:
    input_ids: list[int]
    trained: list[int]  # 1 where the token is a training target
    truncated: bool = False
    per_turn_fallback: bool = False  # one of the per-turn samples of a dialogue the template is not prefix-stable for


def _location(conv: Conversation) -> tuple[str, int | None]:
    path, _, line = conv.source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (conv.source, None)


def encode_pieces(pieces: Sequence[Piece], tokenizer: PreTrainedTokenizerBase,
                  train_on: Sequence[str]) -> EncodedDialogue:
    """Tokenise the rendered text and flag tokens that start inside a trained body."""
    text, spans, pos = "", [], 0
    for piece in pieces:
        if piece.kind in train_on:
            spans.append((pos, pos + len(piece.text)))
        text += piece.text
        pos += len(piece.text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained, span = [], 0
    for start, _ in enc["offset_mapping"]:
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        trained.append(int(span < len(spans) and spans[span][0] <= start))
    return EncodedDialogue(list(enc["input_ids"]), trained)


def encode_messages(messages: Sequence[Message], tools: Sequence[dict], template: ChatTemplate,
                    tokenizer: PreTrainedTokenizerBase, train_on: Sequence[str]) -> EncodedDialogue:
    """The whole dialogue as one sample (raises `NotPrefixStable` where the template is not)."""
    return encode_pieces(template.render(messages, tools), tokenizer, train_on)


def encode_turns(messages: Sequence[Message], tools: Sequence[dict], template: ChatTemplate,
                 tokenizer: PreTrainedTokenizerBase, train_on: Sequence[str]) -> list[EncodedDialogue]:
    """One sample per turn of a kind in `train_on`: the history before it, then that turn."""
    return [encode_pieces(template.render_turn(messages, tools, k), tokenizer, train_on)
            for k, msg in enumerate(messages) if msg.kind in train_on]


def _fits(enc: EncodedDialogue, max_len: int, overlong: str, path: str, line: int | None) -> bool:
    if len(enc.input_ids) <= max_len:
        return True
    if overlong == "error":
        raise DataError(path, line, "messages", f"{len(enc.input_ids)} tokens exceed train.seq_len={max_len} "
                        "(data.overlong=truncate or drop to accept it)")
    return False


def encode_conversation(conv: Conversation, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
                        train_on: Sequence[str], max_len: int, overlong: str,
                        multi_turn: str = "one_pass") -> list[EncodedDialogue | None]:
    """A dialogue's samples (None: a sample dropped as overlong).

    An overlong one-pass sample is cut after the last trained turn that fits, dropped or
    rejected, as `overlong` says; an overlong per-turn sample cannot be cut without losing its
    target, so it is dropped (or rejected).
    """
    unknown = set(train_on) - set(TRAINABLE_KINDS)
    if unknown:
        raise ValueError(f"data.train_on: unknown kinds {sorted(unknown)}; allowed: {list(TRAINABLE_KINDS)}")
    if set(train_on) - set(template.trainable_kinds):
        raise ValueError(f"data.train_on={list(train_on)}: chat template {template.name!r} can train only "
                         f"{list(template.trainable_kinds)}")
    if multi_turn not in MULTI_TURN:
        raise ValueError(f"data.multi_turn={multi_turn!r}; allowed: {list(MULTI_TURN)}")
    path, line = _location(conv)
    if not any(m.kind in train_on for m in conv.messages):
        raise DataError(path, line, "messages", f"nothing to train on: no turn of kinds {list(train_on)}")
    fallback = False
    if multi_turn == "one_pass":
        try:
            enc = encode_messages(conv.messages, conv.tools, template, tokenizer, train_on)
        except NotPrefixStable:
            fallback = True
        else:
            return [enc if _fits(enc, max_len, overlong, path, line) else _truncated(conv, template, tokenizer,
                                                                                   train_on, max_len, overlong)]
    samples = encode_turns(conv.messages, conv.tools, template, tokenizer, train_on)
    for enc in samples:
        enc.per_turn_fallback = fallback
    return [enc if _fits(enc, max_len, overlong, path, line) else None for enc in samples]


def _truncated(conv: Conversation, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
               train_on: Sequence[str], max_len: int, overlong: str) -> EncodedDialogue | None:
    if overlong == "drop":
        return None
    for end in range(len(conv.messages) - 1, 0, -1):
        if conv.messages[end - 1].kind not in train_on:
            continue
        cut = encode_messages(conv.messages[:end], conv.tools, template, tokenizer, train_on)
        if len(cut.input_ids) <= max_len:
            cut.truncated = True
            return cut
    return None
