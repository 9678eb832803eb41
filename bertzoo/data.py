"""Batching shared by pretraining and every task: a deterministic, rank-aware, resumable batch
sampler (optionally grouping similar lengths) and padding to the batch's longest row.

One global order per epoch, computed from (seed, epoch) alone: with W processes each taking its
slice of every global batch, W processes see exactly the batches one process with a W-times
larger batch would, so multi-device runs equal single-device runs, and resuming needs only the
epoch and the number of batches already drawn (no replaying of the data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BatchSampler(Sampler[list[int]]):
    """Yields this process's index lists, one per step.

    Args:
        num_samples: Size of the dataset.
        batch_size: Rows per batch on each process.
        shuffle: A new random order every epoch (training); otherwise the dataset order.
        lengths: Row lengths; with `group_by_length`, rows of similar length share batches.
        group_by_length: Sort by length inside windows of `group_window` global batches, so
            batches carry little padding while the order stays random (HF's LengthGroupedSampler
            idea). Without shuffling, the whole set is sorted longest first.
        drop_last: Drop the final incomplete global batch (training, so that every process
            takes the same number of steps). Otherwise it is split as evenly as possible.
        seed: Base of the per-epoch permutation.
        rank, world_size: This process and the number of processes (default: from
            torch.distributed when initialised, else 0 and 1).
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = False,
                 lengths: Sequence[int] | None = None, group_by_length: bool = False,
                 group_window: int = 50, drop_last: bool = False, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if group_by_length and lengths is None:
            raise ValueError("group_by_length needs the row lengths")
        default_rank, default_world = distributed_rank_and_size()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_by_length = group_by_length
        self.group_window = group_window
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out (for exact resume)
        self._resume_position = 0  # batches the next iteration skips (set by load_state_dict)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def global_order(self) -> np.ndarray:
        """All indices of this epoch in the order global batches take them."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        if not self.group_by_length:
            return order
        if not self.shuffle:
            return order[np.argsort(-self.lengths[order], kind="stable")]
        window = self.global_batch_size * self.group_window
        chunks = [order[i:i + window] for i in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        # Shuffle whole global batches so long and short batches alternate.
        size = self.global_batch_size
        full = len(order) // size
        batch_order = rng.permutation(full)
        head = order[: full * size].reshape(full, size)[batch_order].reshape(-1)
        return np.concatenate([head, order[full * size:]])

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch_size
        return math.ceil(self.num_samples / self.global_batch_size) if self.num_samples else 0

    def _batches(self):
        order = self.global_order()
        size = self.global_batch_size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            if len(chunk) < size:
                if self.drop_last:
                    return
                mine = np.array_split(chunk, self.world_size)[self.rank]  # nearly even split
            else:
                mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield mine.tolist()

    def __iter__(self):
        # Only a restored state skips batches: an iteration abandoned early (Lightning's sanity
        # check stops after 2 validation batches) must not shorten the next one.
        skip, self._resume_position = self._resume_position, 0
        for index, batch in enumerate(self._batches()):
            if index < skip:
                continue  # resumed mid-epoch: these were consumed before the checkpoint
            self.position = index + 1
            if batch:  # a short final batch may leave a process nothing to do
                yield batch
        self.position = 0
        self.epoch += 1  # the next epoch reshuffles even if nobody calls set_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._resume_position = self.position


def pad_to(values: Sequence[Sequence[int]], pad_value: int, multiple_of: int | None = None,
           length: int | None = None) -> torch.Tensor:
    """(B, T) tensor from rows of different lengths; T = longest row (or `length`), rounded up to
    a multiple of `multiple_of` when given (helps tensor cores and vectorised kernels)."""
    longest = length if length is not None else max((len(v) for v in values), default=0)
    if multiple_of:
        longest = math.ceil(longest / multiple_of) * multiple_of
    out = torch.full((len(values), longest), pad_value, dtype=torch.long)
    for row, value in enumerate(values):
        out[row, : len(value)] = torch.as_tensor(value, dtype=torch.long)
    return out

