"""What the model sees: decoded samples with their trained spans, for eyeballing masks."""
from __future__ import annotations

from itertools import groupby

from transformers import PreTrainedTokenizerBase

from data.dataset import PackedSplit

OPEN, CLOSE = "\x1b[32m[[", "]]\x1b[0m"  # trained text shows green between [[ ]]


def trained_spans(input_ids: list[int], trained: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive runs of (is_trained, token ids)."""
    return [(bool(flag), [i for i, _ in run]) for flag, run in groupby(zip(input_ids, trained), key=lambda x: x[1])]


def sample_records(split: PackedSplit, tokenizer: PreTrainedTokenizerBase, count: int) -> list[dict]:
    """The first `count` samples as {"text", "trained"} (decoded sample, decoded trained spans), with the
    dialogue each comes from and whether it was trained per turn for want of a prefix-stable template."""
    records = []
    for index in range(min(count, len(split.docs))):
        ids, flags = split.docs[index]["input_ids"], split.docs[index]["trained"]
        runs = trained_spans(ids, flags)
        records.append({
            "text": tokenizer.decode(ids),
            "trained": [tokenizer.decode(run) for flag, run in runs if flag],
            "marked": "".join(OPEN + tokenizer.decode(run) + CLOSE if flag else tokenizer.decode(run)
                              for flag, run in runs),
            "tokens": len(ids),
            "dialogue": split.docs[index]["dialogue"],
            "per_turn_fallback": split.docs[index]["per_turn_fallback"],
        })
    return records
