"""Whole dialogues → rows of at most `capacity` tokens, and rows → model inputs.

Labels are shifted inside each document (a document's last token predicts nothing) and
`position_ids` restart at 0 per document, which is how transformers' attention keeps
packed documents from seeing each other when no attention mask is passed.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch

IGNORE_INDEX = -100


def pack_documents(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Whole documents into as few rows as two deterministic heuristics find; equal input, equal rows.

    Best-fit decreasing is fast and optimal when most rows can hold one or two documents; minimum
    bin slack (each row: the longest document left, then the subset of the others that fills it
    closest) wins when rows hold several, e.g. hotel dialogues in rows of 4,096 (96.7% -> 99.1%).
    It runs only when best fit leaves room for a whole row to be saved, and the fewer rows win.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"documents {too_long[:5]} are longer than the row capacity {capacity}")
    rows = best_fit_decreasing(lengths, capacity)
    if len(rows) > -(-sum(lengths) // capacity):  # above the volume bound: fewer rows may exist
        slack = minimum_bin_slack(lengths, capacity)
        if len(slack) < len(rows):
            return slack
    return rows


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Each document goes, longest first, into the open row with the least room that still
    fits it. Ties break by index, so the same lengths always give the same rows."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for doc in order:
        slot = bisect.bisect_left(free, (lengths[doc], -1))
        if slot == len(free):
            rows.append([doc])
            room, row = capacity - lengths[doc], len(rows) - 1
        else:
            room, row = free.pop(slot)
            rows[row].append(doc)
            room -= lengths[doc]
        if room > 0:
            bisect.insort(free, (room, row))
    return rows


def minimum_bin_slack(lengths: Sequence[int], capacity: int, budget: int = 2000) -> list[list[int]]:
    """Gupta and Ho's minimum bin slack: rows one at a time, each opened by the longest document
    left and completed by a depth-first search (at most `budget` nodes) over the distinct lengths
    left, longest first, for the subset leaving the least room. Documents of equal length are
    taken in index order, so the result is deterministic."""
    by_length: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], -i)):
        by_length.setdefault(lengths[i], []).append(i)  # pop() gives the lowest index
    sizes = sorted(by_length)  # distinct lengths still available, ascending
    rows: list[list[int]] = []
    while sizes:
        first = sizes[-1]
        row = [_take(by_length, sizes, first)]
        row += [_take(by_length, sizes, n) for n in _closest_subset(capacity - first, sizes, by_length, budget)]
        rows.append(row)
    return rows


def _take(by_length: dict[int, list[int]], sizes: list[int], length: int) -> int:
    docs = by_length[length]
    doc = docs.pop()
    if not docs:
        del by_length[length]
        sizes.pop(bisect.bisect_left(sizes, length))
    return doc


def _closest_subset(room: int, sizes: list[int], by_length: dict[int, list[int]], budget: int) -> list[int]:
    """Lengths (each at most as often as documents of it are left) with the largest sum <= room."""
    best_room, best = room, []
    chosen: list[int] = []  # indices into sizes, non-increasing: each subset is visited once
    taken: dict[int, int] = {}
    k, nodes = bisect.bisect_right(sizes, room) - 1, 0
    while best_room:
        while k >= 0 and taken.get(k, 0) == len(by_length[sizes[k]]):
            k -= 1
        if k >= 0 and nodes < budget:
            nodes += 1
            chosen.append(k)
            taken[k] = taken.get(k, 0) + 1
            room -= sizes[k]
            if room < best_room:
                best_room, best = room, list(chosen)
            k = min(k, bisect.bisect_right(sizes, room) - 1)  # repeats allowed, longer ones no longer fit
            continue
        if not chosen or nodes >= budget:
            break
        last = chosen.pop()
        taken[last] -= 1
        room += sizes[last]
        k = last - 1
    return [sizes[i] for i in best]


@dataclass
class PackingStats:
    documents: int
    rows: int
    tokens: int
    capacity: int

    @property
    def efficiency(self) -> float:
        """Real tokens over row capacity: the share of compute spent on data, not padding."""
        return self.tokens / max(1, self.rows * self.capacity)


def build_row(docs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Concatenate (input_ids, trained) documents into one row with per-document labels/positions."""
    ids, labels, positions = [], [], []
    for doc_ids, trained in docs:
        n = len(doc_ids)
        ids.extend(doc_ids)
        labels.extend(doc_ids[t + 1] if trained[t + 1] else IGNORE_INDEX for t in range(n - 1))
        labels.append(IGNORE_INDEX)
        positions.extend(range(n))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}


def collate_rows(rows: Sequence[dict[str, torch.Tensor]], pad_id: int,
                 attention_mask: bool = False, width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest (or to `width`: one shape for every batch, as torch.compile wants).

    Packed rows get `position_ids` that restart per document, and the padding is its own document
    that trains nothing. With `attention_mask=True` (one dialogue per row: methods whose virtual
    tokens sit in front of a whole row) they get an `attention_mask`, 0 on padding, instead.
    """
    width = max([len(r["input_ids"]) for r in rows] + [width or 0])
    fills = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    if attention_mask:
        packed = [i for i, r in enumerate(rows) if bool((r["position_ids"][1:] == 0).any())]
        if packed:
            raise ValueError(f"rows {packed[:5]} hold several documents: an attention mask would let them see "
                             f"each other (build the split with packing=False)")
        fills["attention_mask"] = 0
    else:
        fills["position_ids"] = 0
    batch = {k: torch.full((len(rows), width), fill, dtype=torch.long) for k, fill in fills.items()}
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = r["input_ids"]
        batch["labels"][i, :n] = r["labels"]
        if attention_mask:
            batch["attention_mask"][i, :n] = 1
        else:
            batch["position_ids"][i, :n] = r["position_ids"]
            batch["position_ids"][i, n:] = torch.arange(width - n)
    return batch
