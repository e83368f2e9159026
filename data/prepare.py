"""Data tools: any supported format → `messages` or ChatGLM `conversations` JSON lines, deduplicated, split.

- CSV → `{"conversations": [{"role": "user", ...}, {"role": "assistant", ...}]}` one object a
  line, exactly as seed 001's script writes it (title → user, reply → assistant; `is_best`
  as an optional filter).
- Any format `data.formats` reads → our `messages` JSONL (calls as `search`, results as
  `return` when they are JSON lists), which reads back to the same conversations.
- Exact duplicates (the same output record) are dropped, first occurrence kept.
- An optional split (seed 000 §12.5: train/dev/test by random sampling, default 8:1:1)
  shuffles with a fixed seed, so the same input and seed always give the same files.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from data.conversation import Conversation, Message
from data.dataset import load_tools
from data.formats import read_conversations

OUTPUT_FORMATS = ("messages", "conversations")
SPLIT_NAMES = ("train", "dev", "test")


@dataclass
class PrepareConfig:
    input: str = "???"
    output: str = "???"  # a .jsonl file; with `split`, a directory that gets train/dev/test.jsonl
    format: str = "csv"  # what `input` is: messages | chatglm | alpaca | sharegpt | csv
    to: str = "conversations"  # conversations (ChatGLM3, seed 001) | messages (this project's format)
    columns: dict[str, str] = field(default_factory=lambda: {"user": "title", "assistant": "reply"})  # csv only
    filter_column: Optional[str] = None  # csv: keep rows whose value here is 1/true/yes (seed 001: is_best)
    system: Optional[str] = None  # system prompt for conversations without one
    tools: list[str] = field(default_factory=list)  # JSON files of function schemas for conversations without tools
    dedup: bool = True
    split: list[float] = field(default_factory=list)  # e.g. [8, 1, 1]; empty: one output file
    seed: int = 42


def _call_message(msg: Message) -> list[dict[str, Any]]:
    if len(msg.tool_calls) == 1:
        call = msg.tool_calls[0]
        return [{"role": "search", "name": call.name, "arguments": call.arguments}]
    return [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in msg.tool_calls]}]


def _result_message(msg: Message, last_call: str | None) -> dict[str, Any]:
    """A `return` turn when the result is a JSON list of the last call, else a `tool` turn."""
    try:
        records = json.loads(msg.content)
    except json.JSONDecodeError:
        records = None
    if isinstance(records, list) and msg.name in (None, last_call):
        return {"role": "return", "records": records}
    return {"role": "tool", "content": msg.content, **({"name": msg.name} if msg.name else {})}


def to_messages(conv: Conversation) -> dict[str, Any]:
    """Our `messages` record; `data.formats` reads it back to the same conversation."""
    messages: list[dict[str, Any]] = []
    last_call = None
    for msg in conv.messages:
        if msg.kind == "call":
            messages += _call_message(msg)
            last_call = msg.tool_calls[-1].name
        elif msg.kind == "tool":
            messages.append(_result_message(msg, last_call))
        else:
            messages.append({"role": msg.role, "content": msg.content})
    return {"messages": messages, **({"tools": conv.tools} if conv.tools else {})}


def to_conversations(conv: Conversation) -> dict[str, Any]:
    """A ChatGLM3 record: calls as assistant turns with `metadata`, results as `observation`."""
    turns: list[dict[str, Any]] = []
    for msg in conv.messages:
        if msg.kind == "call":
            turns += [{"role": "assistant", "metadata": c.name, "content": json.dumps(c.arguments, ensure_ascii=False)}
                      for c in msg.tool_calls]
        elif msg.kind == "tool":
            turns.append({"role": "observation", "content": msg.content})
        else:
            turns.append({"role": msg.role, "content": msg.content})
    return {"conversations": turns, **({"tools": conv.tools} if conv.tools else {})}


def deduplicate(records: Sequence[dict]) -> list[dict]:
    """Records without exact repeats (same JSON), first occurrence kept, order unchanged."""
    seen, kept = set(), []
    for record in records:
        key = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def split_records(records: Sequence[dict], ratios: Sequence[float], seed: int) -> list[list[dict]]:
    """A seeded shuffle cut into parts proportional to `ratios` (cumulative rounding, so 8:1:1 of 10 is 8/1/1)."""
    if not 2 <= len(ratios) <= len(SPLIT_NAMES) or any(r < 0 for r in ratios) or not sum(ratios):
        raise ValueError(f"split={list(ratios)}: give 2 or 3 non-negative ratios (train, dev[, test]), e.g. [8, 1, 1]")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    bounds, total, running = [0], sum(ratios), 0.0
    for ratio in ratios:
        running += ratio
        bounds.append(round(len(records) * running / total))
    return [[records[i] for i in order[a:b]] for a, b in zip(bounds, bounds[1:])]


def _write(path: Path, records: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in tqdm(records, desc=f"writing {path.name}", leave=False, dynamic_ncols=True):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def prepare(cfg: PrepareConfig) -> dict[str, int]:
    """Convert, deduplicate, split and write; returns the counts it printed."""
    if cfg.to not in OUTPUT_FORMATS:
        raise ValueError(f"to={cfg.to!r}; allowed: {', '.join(OUTPUT_FORMATS)}")
    csv_options = {"columns": dict(cfg.columns), "filter_column": cfg.filter_column} if cfg.format == "csv" else {}
    conversations = read_conversations(cfg.input, cfg.format, tools=load_tools(cfg.tools), system=cfg.system,
                                       **csv_options)
    counts = {"read": len(conversations)}
    if cfg.filter_column and cfg.format == "csv":
        unfiltered = read_conversations(cfg.input, "csv", columns=dict(cfg.columns))
        counts["filtered_out"] = len(unfiltered) - len(conversations)
    convert = to_messages if cfg.to == "messages" else to_conversations
    records = [convert(c) for c in tqdm(conversations, desc="converting", dynamic_ncols=True)]
    if cfg.dedup:
        kept = deduplicate(records)
        counts["duplicates_removed"] = len(records) - len(kept)
        records = kept
    if cfg.split:
        for name, part in zip(SPLIT_NAMES, split_records(records, cfg.split, cfg.seed)):
            _write(Path(cfg.output) / f"{name}.jsonl", part)
            counts[name] = len(part)
    else:
        _write(Path(cfg.output), records)
        counts["written"] = len(records)
    return counts
