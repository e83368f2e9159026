"""A data file → encoded dialogues (cached with `datasets`) → packed rows."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import datasets
import pyarrow.compute as pc
import torch
from transformers import PreTrainedTokenizerBase

from data.config import MULTI_TURN, OVERLONG, DataConfig
from data.conversation import TRAINABLE_KINDS
from data.encoding import encode_conversation
from data.errors import DataError
from data.formats import iter_conversations
from data.packing import PackingStats, build_row, pack_documents
from data.templates import ChatTemplate

# Bump when encoding or rendering changes, so stale caches are never reused.
ENCODING_VERSION = "2"
# Bump when the packer changes: packed rows are cached beside the encoded dialogues.
PACKING_VERSION = "2"
# With data.num_proc unset, files of this many dialogues are encoded by every core, smaller ones by one.
PARALLEL_FROM = 5000


@dataclass
class PackedSplit:
    """One split ready for the loop: encoded dialogues and the rows they are packed into."""

    docs: datasets.Dataset  # one row per sample; columns: input_ids, trained, truncated, dialogue, per_turn_fallback
    rows: list[list[int]]  # document indices per row
    stats: PackingStats
    truncated: int
    dropped: int
    dialogues: int = 0  # dialogues the samples come from
    per_turn_fallback: int = 0  # dialogues trained per turn because the template is not prefix-stable for them

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> dict[str, torch.Tensor]:
        """Read from the memory-mapped Arrow cache on demand, so the split costs no RAM per token."""
        docs = [self.docs[d] for d in self.rows[index]]
        return build_row([(d["input_ids"], d["trained"]) for d in docs])

    def report(self, name: str) -> str:
        s = self.stats
        fallback = (f", {self.per_turn_fallback} of {self.dialogues} dialogues trained per turn (chat template not "
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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """Read, validate and encode every dialogue of a file; cached by content and settings."""
    return _encoded(path, cfg, template, tokenizer, max_len)[0]


def _encoded(path: str, cfg: DataConfig, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
             max_len: int) -> tuple[datasets.Dataset, Path]:
    """The encoded samples (columns input_ids, trained, truncated, dialogue, per_turn_fallback) and their
    cache directory.

    Nothing is held per dialogue in Python: conversations stream from the file into an Arrow
    table, `.map` encodes it in `data.num_proc` processes, writing Arrow shards, and the run reads
    them memory-mapped. Everything goes to a staging directory renamed into place when every
    dialogue has passed, so a bad line leaves no cache entry behind.
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
    cache = Path(os.path.expanduser(cfg.cache_dir)) / f"{Path(path).stem}-{key}"
    if not (cache / "done").is_file():
        staging = cache.with_name(f"{cache.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _encode_into(staging, key, path, cfg, tools, template, tokenizer, max_len)
            (staging / "done").touch()
            try:
                staging.rename(cache)
            except OSError:  # another rank committed the same entry first
                if not (cache / "done").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    shards = sorted(str(p) for p in cache.glob("encoded*.arrow"))
    docs = datasets.concatenate_datasets([datasets.Dataset.from_file(p) for p in shards])
    return docs.remove_columns("error"), cache


def _encode_into(staging: Path, key: str, path: str, cfg: DataConfig, tools: list[dict], template: ChatTemplate,
                 tokenizer: PreTrainedTokenizerBase, max_len: int) -> None:
    read_any = False

    def conversations() -> Iterator[dict]:
        nonlocal read_any
        for dialogue, conv in enumerate(iter_conversations(path, cfg.format, tools=tools, system=cfg.system,
                                                           columns=dict(cfg.columns),
                                                           filter_column=cfg.filter_column)):
            read_any = True
            yield {"conversation": pickle.dumps(conv), "dialogue": dialogue}

    # Read and validated in this process, in file order, so the first bad record is the one reported.
    try:
        read = datasets.Dataset.from_generator(conversations, cache_dir=str(staging / "read"), fingerprint=key,
                                               features=datasets.Features({"conversation": datasets.Value("binary"),
                                                                          "dialogue": datasets.Value("int64")}))
    except datasets.exceptions.DatasetGenerationError as err:  # wraps what the reader raised
        raise (err.__cause__ or err) from None
    except ValueError:  # datasets' own word for a generator that yielded nothing: "corresponds to no data"
        if read_any:
            raise
    if not read_any:
        raise DataError(path, None, None, _why_empty(path, cfg))
    num_proc = cfg.num_proc or ((os.cpu_count() or 1) if len(read) >= PARALLEL_FROM else 1)
    encoded = read.map(
        _encode_batch, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["conversation", "dialogue"], cache_file_name=str(staging / "encoded.arrow"), new_fingerprint=key,
        fn_kwargs={"template": template, "tokenizer": tokenizer, "train_on": list(cfg.train_on),
                   "max_len": max_len, "overlong": cfg.overlong, "multi_turn": cfg.multi_turn},
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                    "trained": datasets.List(datasets.Value("int8")),
                                    "truncated": datasets.Value("bool"), "dialogue": datasets.Value("int64"),
                                    "per_turn_fallback": datasets.Value("bool"), "error": datasets.Value("string")}),
        desc=f"encoding {Path(path).name}")
    errors = pc.indices_nonzero(pc.not_equal(encoded.data.column("error"), "")).to_pylist()
    if errors:
        raise DataError(*json.loads(encoded[errors[0]]["error"]))
    del read, encoded  # close the memory maps before the staging directory moves
    shutil.rmtree(staging / "read")


def _why_empty(path: str, cfg: DataConfig) -> str:
    if not Path(path).read_text(encoding="utf-8", errors="replace").strip():
        return "the file is empty (no dialogues)"
    if cfg.filter_column:
        return f"no row passes data.filter_column={cfg.filter_column} (none has a true value there)"
    return "no dialogues in the file"


def _encode_batch(batch: dict[str, list], template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
                  train_on: list[str], max_len: int, overlong: str, multi_turn: str) -> dict[str, list]:
    """Encode a batch of pickled conversations (written by this run) into their samples (one per
    dialogue, or one per assistant turn); a `DataError` becomes the row's `error` (JSON of its
    arguments) so the parent raises the first one in file order."""
    columns = ("input_ids", "trained", "truncated", "dialogue", "per_turn_fallback", "error")
    out: dict[str, list] = {name: [] for name in columns}
    for blob, dialogue in zip(batch["conversation"], batch["dialogue"]):
        try:
            samples, error = encode_conversation(pickle.loads(blob), template, tokenizer, train_on, max_len,
                                                 overlong, multi_turn), ""
        except DataError as err:
            samples, error = [None], json.dumps([err.path, err.line, err.field, err.problem], ensure_ascii=False)
        for enc in samples:
            for name, value in zip(columns, (enc.input_ids if enc else [], enc.trained if enc else [],
                                             bool(enc and enc.truncated), dialogue,
                                             bool(enc and enc.per_turn_fallback), error)):
                out[name].append(value)
    return out


def load_split(path: str, cfg: DataConfig, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase,
               seq_len: int, packing: bool | None = None) -> PackedSplit:
    """Encode a file and pack it: many dialogues per row, or one per row when packing is off.

    The packed rows are cached beside the encoded dialogues, so a second run of a large file
    reads both instead of recomputing them.
    """
    docs, cache = _encoded(path, cfg, template, tokenizer, seq_len)
    lengths = pc.list_value_length(docs.data.column("input_ids")).to_numpy(zero_copy_only=False).tolist()
    kept = [i for i, n in enumerate(lengths) if n > 0]
    if not kept:
        raise DataError(path, None, None, f"no dialogue fits train.seq_len={seq_len}")
    packing = cfg.packing if packing is None else packing
    rows = _packed_rows(cache / f"rows-{seq_len}-v{PACKING_VERSION}.json", [lengths[i] for i in kept], seq_len,
                        kept) if packing else [[i] for i in kept]
    stats = PackingStats(documents=len(kept), rows=len(rows), tokens=sum(lengths[i] for i in kept),
                         capacity=seq_len)
    truncated = pc.sum(docs.data.column("truncated").cast("int64")).as_py() or 0
    dialogue = docs.data.column("dialogue")
    fallback = pc.count_distinct(pc.filter(dialogue, docs.data.column("per_turn_fallback"))).as_py()
    return PackedSplit(docs, rows, stats, truncated=truncated, dropped=len(lengths) - len(kept),
                       dialogues=pc.count_distinct(dialogue).as_py(), per_turn_fallback=fallback)


def _packed_rows(cached: Path, lengths: list[int], seq_len: int, kept: list[int]) -> list[list[int]]:
    """Rows of document indices (into the whole file), packed once and cached."""
    if cached.is_file():
        return json.loads(cached.read_text())
    rows = [[kept[j] for j in row] for row in pack_documents(lengths, seq_len)]
    tmp = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, cached)
    return rows
