"""A data file → encoded dialogues (cached with `datasets`) → packed rows."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from data.config import DataConfig
from data.conversation import TRAINABLE_KINDS
from data.encoding import MULTI_TURN, OVERLONG, encode_conversation
from data.errors import DataError
from data.formats import read_conversations
from data.packing import PackingStats, build_row, pack_documents
from data.templates import ChatTemplate

# Bump when encoding or rendering changes, so stale caches are never reused.
ENCODING_VERSION = "2"


@dataclass
class PackedSplit:
    """One split ready for the loop: encoded dialogues and the rows they are packed into."""

    docs: datasets.Dataset  # one row per sample; columns: input_ids, trained, truncated, dialogue, per_turn_fallback
    rows: list[list[int]]  # document indices per row
    stats: PackingStats
    truncated: int
    dropped: int
    per_turn_fallback: int = 0  # dialogues trained per turn because the template is not prefix-stable for them

    def __post_init__(self) -> None:
        self._ids, self._trained = self.docs["input_ids"], self.docs["trained"]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> dict[str, torch.Tensor]:
        return build_row([(self._ids[d], self._trained[d]) for d in self.rows[index]])

    def report(self, name: str) -> str:
        s = self.stats
        dialogues = len(set(self.docs["dialogue"]))
        fallback = (f", {self.per_turn_fallback} of {dialogues} dialogues trained per turn (chat template not "
                    "prefix-stable for them)" if self.per_turn_fallback else "")
        return (f"{name}: {s.documents} samples → {s.rows} rows of ≤{s.capacity} tokens, "
                f"{s.tokens:,} tokens, packing efficiency {s.efficiency:.1%}, "
                f"{self.truncated} truncated, {self.dropped} dropped as overlong{fallback}")


def load_tools(paths: Sequence[str]) -> list[dict]:
    """Function schemas from JSON files (one schema or a list of them per file)."""
    tools: list[dict] = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(path, None, None, "file not found (data.tools)")
        try:
            loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(path, err.lineno, None, f"invalid JSON: {err.msg}") from None
        tools.extend(loaded if isinstance(loaded, list) else [loaded])
    return tools


def _file_digest(path: str) -> str:
    if not Path(path).is_file():
        raise DataError(path, None, None, "file not found")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cache_key(path: str, cfg: DataConfig, tools: list[dict], template: ChatTemplate,
               tokenizer: PreTrainedTokenizerBase, max_len: int) -> str:
    parts = {
        "file": _file_digest(path), "format": cfg.format, "tools": tools, "system": cfg.system,
        "columns": dict(cfg.columns), "filter": cfg.filter_column, "train_on": sorted(cfg.train_on),
        "overlong": cfg.overlong, "max_len": max_len, "template": repr(template), "multi_turn": cfg.multi_turn,
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "version": ENCODING_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]


def encode_file(path: str, cfg: DataConfig, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
                max_len: int) -> datasets.Dataset:
    """Read, validate and encode every dialogue of a file; cached by content and settings.

    Every dialogue is read and validated before anything is written, so a bad line
    leaves no cache entry behind.
    """
    if not tokenizer.is_fast:
        raise ValueError("a fast tokenizer is required (character offsets locate the trained spans)")
    bad = set(cfg.train_on) - set(TRAINABLE_KINDS)
    if bad:
        raise ValueError(f"data.train_on: unknown {sorted(bad)}; allowed: {list(TRAINABLE_KINDS)}")
    if cfg.overlong not in OVERLONG:
        raise ValueError(f"data.overlong={cfg.overlong!r}; allowed: {list(OVERLONG)}")
    if cfg.multi_turn not in MULTI_TURN:
        raise ValueError(f"data.multi_turn={cfg.multi_turn!r}; allowed: {list(MULTI_TURN)}")
    tools = load_tools(cfg.tools)
    key = _cache_key(path, cfg, tools, template, tokenizer, max_len)
    cache = Path(os.path.expanduser(cfg.cache_dir)) / f"{Path(path).stem}-{key}.arrow"
    if cache.is_file():
        return datasets.Dataset.from_file(str(cache))
    convs = read_conversations(path, cfg.format, tools=tools, system=cfg.system,
                               columns=dict(cfg.columns), filter_column=cfg.filter_column)
    # A bar only when encoding takes a while (delay), and only on rank 0 under torchrun.
    progress = tqdm(convs, desc=f"encoding {Path(path).name}", unit="dialogue", delay=2,
                    disable=int(os.environ.get("RANK", 0)) != 0)
    samples = [(d, enc) for d, conv in enumerate(progress)
               for enc in encode_conversation(conv, template, tokenizer, cfg.train_on, max_len, cfg.overlong,
                                              cfg.multi_turn)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict({"index": list(range(len(samples)))})

    def to_columns(example: dict) -> dict:
        dialogue, enc = samples[example["index"]]
        return {"input_ids": enc.input_ids if enc else [], "trained": enc.trained if enc else [],
                "truncated": bool(enc and enc.truncated), "dialogue": dialogue,
                "per_turn_fallback": bool(enc and enc.per_turn_fallback)}

    return table.map(to_columns, remove_columns=["index"], cache_file_name=str(cache), new_fingerprint=key,
                     desc=f"caching {Path(path).name}")


def load_split(path: str, cfg: DataConfig, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
               seq_len: int, packing: bool | None = None) -> PackedSplit:
    """Encode a file and pack it: many dialogues per row, or one per row when packing is off."""
    docs = encode_file(path, cfg, template, tokenizer, seq_len)
    lengths = [len(ids) for ids in docs["input_ids"]]
    kept = [i for i, n in enumerate(lengths) if n > 0]
    if not kept:
        raise DataError(path, None, None, f"no dialogue fits train.seq_len={seq_len}")
    packing = cfg.packing if packing is None else packing
    rows = ([[kept[j] for j in row] for row in pack_documents([lengths[i] for i in kept], seq_len)]
            if packing else [[i] for i in kept])
    stats = PackingStats(documents=len(kept), rows=len(rows), tokens=sum(lengths[i] for i in kept),
                         capacity=seq_len)
    fallback = len({d for d, flag in zip(docs["dialogue"], docs["per_turn_fallback"]) if flag})
    return PackedSplit(docs, rows, stats, truncated=sum(docs["truncated"]), dropped=len(lengths) - len(kept),
                       per_turn_fallback=fallback)
