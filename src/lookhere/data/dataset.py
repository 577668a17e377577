"""Torch datasets of `Sample`s: a synthetic task's index range, or samples held in memory."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from torch.utils.data import Dataset

from lookhere.data.sample import Sample
from lookhere.data.synthetic.base import SyntheticTask

T = TypeVar("T")


class TaskDataset(Dataset):
    """Samples ``start .. start + n - 1`` of a synthetic task, generated on demand.

    Generation is deterministic per (seed, index), so every process and every resumed run sees
    the same sample at the same index without storing anything.
    """

    def __init__(self, task: SyntheticTask, n: int, start: int = 0) -> None:
        if n < 1 or start < 0:
            raise ValueError(f"TaskDataset needs n >= 1 and start >= 0, got n={n}, start={start}")
        self.task, self.n, self.start = task, int(n), int(start)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} is out of range for {self.n} samples")
        return self.task.sample(self.start + i % self.n)

    def materialise(self) -> SampleList:
        """All samples generated once and held in memory (reused across runs)."""
        return SampleList(self[i] for i in range(self.n))


class SampleList(Dataset):
    """A list of samples as a dataset."""

    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples: Sequence[Sample] = list(samples)
        if not self.samples:
            raise ValueError("SampleList needs at least one sample")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily: a generator
    of samples is never held in memory whole."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
