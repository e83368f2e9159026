"""Which rows each rank reads at each optimizer step.

The order is a pure function of (seed, step): every epoch is a seeded permutation of the
rows, each step takes the next `batch_size × grad_accum × world_size` of them, and each
rank takes its own interleaved share. Resuming mid-epoch needs only the step number.
"""
from __future__ import annotations

import torch


class StepSampler:
    def __init__(self, num_rows: int, batch_size: int, grad_accum: int, world_size: int = 1,
                 rank: int = 0, seed: int = 0):
        if min(batch_size, grad_accum, world_size) < 1:
            raise ValueError(f"train.batch_size={batch_size}, train.grad_accum={grad_accum} and world size "
                             f"{world_size} must each be at least 1")
        self.rows_per_step = batch_size * grad_accum * world_size
        if num_rows < self.rows_per_step:
            raise ValueError(f"the training data packs into {num_rows} rows but one optimizer step needs "
                             f"{self.rows_per_step} (train.batch_size × train.grad_accum × world size); "
                             "lower them or add data")
        self.num_rows, self.batch_size, self.grad_accum = num_rows, batch_size, grad_accum
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.steps_per_epoch = num_rows // self.rows_per_step
        self._perm: tuple[int, list[int]] | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.num_rows, generator=gen).tolist())
        return self._perm[1]

    def micro_batches(self, step: int) -> list[list[int]]:
        """Row indices of this rank's `grad_accum` micro-batches for optimizer step `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        rows = self.epoch_order(epoch)[index * self.rows_per_step:(index + 1) * self.rows_per_step]
        mine = rows[self.rank::self.world_size]
        return [mine[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.grad_accum)]
