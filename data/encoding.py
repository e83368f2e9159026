"""Conversation → token ids plus a per-token "is trained" flag.

The whole dialogue is rendered to one string and tokenised once, so training sees
exactly the tokens inference sees; which tokens carry loss comes from the template's
body pieces mapped through the tokenizer's character offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from data.conversation import TRAINABLE_KINDS, Conversation, Message
from data.errors import DataError
from data.templates import ChatTemplate

OVERLONG = ("truncate", "drop", "error")


@dataclass
class EncodedDialogue:
    input_ids: list[int]
    trained: list[int]  # 1 where the token is a training target
    truncated: bool = False


def _location(conv: Conversation) -> tuple[str, int | None]:
    path, _, line = conv.source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (conv.source, None)


def encode_messages(messages: Sequence[Message], tools: Sequence[dict], template: ChatTemplate,
                    tokenizer: PreTrainedTokenizerBase, train_on: Sequence[str]) -> EncodedDialogue:
    """Tokenise the rendered dialogue and flag tokens that start inside a trained body."""
    pieces = template.render(messages, tools)
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


def encode_conversation(conv: Conversation, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
                        train_on: Sequence[str], max_len: int, overlong: str) -> EncodedDialogue | None:
    """Encode one dialogue; an overlong one is cut after the last trained turn that fits,
    dropped (None), or rejected, as `overlong` says."""
    unknown = set(train_on) - set(TRAINABLE_KINDS)
    if unknown:
        raise ValueError(f"data.train_on: unknown kinds {sorted(unknown)}; allowed: {list(TRAINABLE_KINDS)}")
    path, line = _location(conv)
    enc = encode_messages(conv.messages, conv.tools, template, tokenizer, train_on)
    if not any(enc.trained):
        raise DataError(path, line, "messages", f"nothing to train on: no turn of kinds {list(train_on)}")
    if len(enc.input_ids) <= max_len:
        return enc
    if overlong == "drop":
        return None
    if overlong == "error":
        raise DataError(path, line, "messages", f"{len(enc.input_ids)} tokens exceed train.seq_len={max_len} "
                        "(data.overlong=truncate or drop to accept it)")
    for end in range(len(conv.messages) - 1, 0, -1):
        if conv.messages[end - 1].kind not in train_on:
            continue
        cut = encode_messages(conv.messages[:end], conv.tools, template, tokenizer, train_on)
        if len(cut.input_ids) <= max_len:
            cut.truncated = True
            return cut
    return None
