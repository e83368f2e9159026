import random

import pytest

from conftest import compose
from data.dataset import load_split
from data.packing import (IGNORE_INDEX, best_fit_decreasing, build_row, collate_rows, minimum_bin_slack,
                          pack_documents)
from data.sampling import StepSampler
from data.templates import get_template
from models.loading import load_tokenizer


def test_packing_never_splits_and_is_deterministic():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    rows = pack_documents(lengths, 512)
    assert sorted(d for row in rows for d in row) == list(range(500))  # every dialogue exactly once, whole
    assert all(sum(lengths[d] for d in row) <= 512 for row in rows)
    assert rows == pack_documents(list(lengths), 512)
    # within a couple of rows of the volume lower bound
    assert len(rows) <= -(-sum(lengths) // 512) + 2


def test_best_fit_decreasing_example():
    # longest first: 6 opens A (room 4), 5 opens B (room 5), the other 5 fills B, 4 fills A.
    assert pack_documents([6, 5, 4, 5], 10) == [[0, 2], [1, 3]]


def test_minimum_bin_slack_fills_rows_whole_and_deterministically():
    rng = random.Random(1)
    lengths = [rng.randint(450, 1850) for _ in range(300)]
    rows = minimum_bin_slack(lengths, 4096)
    assert sorted(d for row in rows for d in row) == list(range(300))
    assert all(sum(lengths[d] for d in row) <= 4096 for row in rows)
    assert rows == minimum_bin_slack(list(lengths), 4096)
    # each row opens with the longest document left, then the subset filling it closest: 9 + (1, 0) here
    assert minimum_bin_slack([5, 4, 9, 1, 6], 10) == [[2, 3], [4, 1], [0]]


def test_hotel_rows_of_4096_are_at_least_97_percent_full():
    """The packing goal where dialogues allow it: hotel train (~790 tiny-tokenizer tokens a dialogue) in rows
    of 4,096. Best fit decreasing alone reaches 96.7% (124 rows); the packer keeps the better of it and
    minimum bin slack (121 rows), without splitting a dialogue."""
    cfg = compose()
    split = load_split(cfg.data.train, cfg.data, get_template(cfg.model.template, cfg.model.tool_format),
                       load_tokenizer(cfg.model), 4096)
    lengths = [len(split.docs[d]["input_ids"]) for d in range(len(split.docs))]
    assert split.stats.efficiency >= 0.97
    assert len(split) < len(best_fit_decreasing(lengths, 4096))
    assert sorted(d for row in split.rows for d in row) == list(range(len(lengths)))
    assert all(sum(lengths[d] for d in row) <= 4096 for row in split.rows)
    row = split.row(0)
    starts = (row["position_ids"] == 0).nonzero().flatten().tolist()
    assert len(starts) == len(split.rows[0]) > 1  # positions restart per dialogue
    assert all(row["labels"][s - 1] == IGNORE_INDEX for s in starts[1:])  # no label crosses a boundary


def test_overlong_document_is_refused():
    with pytest.raises(ValueError, match="longer than the row capacity"):
        pack_documents([3, 11], 10)


def test_row_labels_shift_within_documents_only():
    row = build_row([([1, 2, 3], [0, 1, 1]), ([4, 5, 6], [0, 0, 1])])
    assert row["labels"].tolist() == [2, 3, IGNORE_INDEX, IGNORE_INDEX, 6, IGNORE_INDEX]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 2]


def test_collate_pads_as_a_separate_untrained_document():
    batch = collate_rows([build_row([([1, 2, 3], [0, 1, 1])]), build_row([([7, 8], [0, 1])])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 8, 0]]
    assert batch["labels"][1].tolist() == [8, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["position_ids"][1].tolist() == [0, 1, 0]


def test_sampler_is_seeded_sharded_and_stateless():
    one = StepSampler(40, batch_size=2, grad_accum=2, world_size=1, seed=3)
    ranks = [StepSampler(40, batch_size=2, grad_accum=1, world_size=2, rank=r, seed=3) for r in range(2)]
    for step in range(25):  # crosses epoch boundaries (10 steps per epoch)
        single = sorted(i for mb in one.micro_batches(step) for i in mb)
        sharded = sorted(i for s in ranks for mb in s.micro_batches(step) for i in mb)
        assert single == sharded  # same global batch, split across ranks without overlap
    epoch0 = [i for s in range(10) for mb in one.micro_batches(s) for i in mb]
    assert sorted(epoch0) == list(range(40))  # an epoch sees every row once
    assert one.micro_batches(13) == StepSampler(40, 2, 2, seed=3).micro_batches(13)  # resume = step number
    assert one.micro_batches(0) != StepSampler(40, 2, 2, seed=4).micro_batches(0)


def test_sampler_rejects_a_step_larger_than_the_data():
    with pytest.raises(ValueError, match="one optimizer step needs 8"):
        StepSampler(5, batch_size=4, grad_accum=2)
