"""Packing efficiency of a split per tokenizer and row length, beside best fit decreasing alone and a lower bound.

    python bench/packing.py [--models tiny,smollm2] [--seq-lens 1024,2048,4096,8192] [--split train]

Each cell is the split as training builds it (`data.dataset.load_split`: dialogues longer than the row
are cut at a turn boundary, data.overlong=truncate) and packed by `data.packing.pack_documents`.
`bound` is a lower bound on the number of rows (no packer can use fewer): the larger of Martello and
Toth's L2 and half the dialogues longer than a third of a row (a row holds at most two of them), so
`best possible` is an upper bound on the efficiency any packer of whole dialogues could reach.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rows_bound(lengths: list[int], capacity: int) -> int:
    """Rows needed at least: documents over half a row need their own, and what fits beside them is bounded."""
    best = max(-(-sum(lengths) // capacity), -(-sum(3 * n > capacity for n in lengths) // 2))
    for k in sorted({0, *(n for n in lengths if n <= capacity // 2)}):
        big = [n for n in lengths if n > capacity - k]
        half = [n for n in lengths if capacity / 2 < n <= capacity - k]
        small = sum(n for n in lengths if k <= n <= capacity / 2)
        room = len(half) * capacity - sum(half)
        best = max(best, len(big) + len(half) + max(0, math.ceil((small - room) / capacity)))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--seq-lens", default="1024,2048,4096,8192")
    p.add_argument("--split", default="train")
    args = p.parse_args()
    from bench.compare_hf import compose
    from data.dataset import load_split
    from data.packing import best_fit_decreasing
    from data.templates import get_template
    from models.loading import load_tokenizer

    cache = tempfile.mkdtemp(prefix="turnpack-packing-")
    print("| tokenizer | seq_len | dialogues (truncated) | tokens/dialogue | rows | efficiency | best fit decreasing "
          "alone | bound (rows) | best possible |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        cfg = compose([f"model={model}", f"data.cache_dir={cache}"])
        tokenizer, template = load_tokenizer(cfg.model), get_template(cfg.model.template, cfg.model.tool_format)
        for seq_len in map(int, args.seq_lens.split(",")):
            split = load_split(cfg.data[args.split], cfg.data, template, tokenizer, seq_len)
            lengths = [len(split.docs[d]["input_ids"]) for row in split.rows for d in row]
            tokens, bfd, bound = sum(lengths), len(best_fit_decreasing(lengths, seq_len)), rows_bound(lengths, seq_len)
            print(f"| {model} | {seq_len:,} | {len(lengths)} ({split.truncated}) | {tokens / len(lengths):,.0f} "
                  f"| {len(split)} | {split.stats.efficiency:.1%} | {tokens / (bfd * seq_len):.1%} ({bfd}) "
                  f"| {bound} | {tokens / (bound * seq_len):.1%} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
