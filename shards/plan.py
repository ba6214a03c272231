"""The epoch plan: which samples each rank, worker and batch gets, as a pure function.

Samples are addressed as (record, offset) with records numbered over all shards in manifest
order. One epoch is a global sequence of samples:

1. the records in a seeded permutation of (seed, epoch) (manifest order when not shuffling);
2. cut into windows of ``shuffle_records`` consecutive records, the samples of each window
   permuted with an rng of (seed, epoch, window) (a cross-record shuffle buffer whose content
   does not depend on workers or ranks);
3. rank ``r`` takes a contiguous span of that sequence, cut into batches of ``batch_size``.

With ``drop_last`` every rank takes ``batches_per_rank * batch_size`` samples and the
``N mod (world_size * batch_size)`` leftovers are the tail of the epoch's sequence, so they
differ from epoch to epoch. Without it the sequence is split evenly over ranks and the last
batches are padded (``valid = False``) so every rank yields the same number of batches.
Worker ``w`` of ``W`` workers yields the rank's batches ``k = start + w, start + w + W, ...``,
which the DataLoader's round-robin returns in order; the order therefore does not depend on
the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochPlan", "rank_span", "record_order"]

_ORDER_TAG, _WINDOW_TAG = 0x5EED0, 0x5EED1


def record_order(num_records: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Record ids in epoch order: a permutation of (seed, epoch), or manifest order."""
    if not shuffle:
        return np.arange(num_records, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, _ORDER_TAG])
    return rng.permutation(num_records).astype(np.int64)


def rank_span(
    num_samples: int, world_size: int, rank: int, batch_size: int, drop_last: bool
) -> tuple[int, int, int]:
    """``(start, stop, batches_per_rank)``: the rank's positions in the epoch sequence."""
    if drop_last:
        per_rank = num_samples // (world_size * batch_size)
        start = rank * per_rank * batch_size
        return start, start + per_rank * batch_size, per_rank
    start = rank * num_samples // world_size
    stop = (rank + 1) * num_samples // world_size
    largest = -(-num_samples // world_size)
    return start, stop, -(-largest // batch_size)


@dataclass
class EpochPlan:
    """Locates epoch-sequence positions as (record, offset) pairs, window by window."""

    record_counts: np.ndarray
    """(R,) samples per record, manifest order."""
    seed: int
    epoch: int
    shuffle: bool
    shuffle_records: int

    def __post_init__(self) -> None:
        self.order = record_order(len(self.record_counts), self.seed, self.epoch, self.shuffle)
        counts = self.record_counts[self.order]
        w = self.shuffle_records
        window_sizes = (
            np.add.reduceat(counts, np.arange(0, len(counts), w)) if len(counts) else counts
        )
        self.window_starts = np.concatenate([[0], np.cumsum(window_sizes)]).astype(np.int64)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(records, offsets)`` of window ``i`` in epoch order, both (n,) int64."""
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        recs = self.order[i * self.shuffle_records : (i + 1) * self.shuffle_records]
        counts = self.record_counts[recs]
        rec = np.repeat(recs, counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        off = np.arange(len(rec), dtype=np.int64) - starts
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, _WINDOW_TAG, i]).permutation(
                len(rec)
            )
            rec, off = rec[perm], off[perm]
        if len(self._cache) >= 4:  # a batch spans at most a few windows
            self._cache.pop(next(iter(self._cache)))
        self._cache[i] = (rec, off)
        return rec, off

    def locate(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(records, offsets)`` of epoch positions ``start..stop-1``."""
        if stop <= start:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        first = int(np.searchsorted(self.window_starts, start, side="right")) - 1
        last = int(np.searchsorted(self.window_starts, stop - 1, side="right")) - 1
        recs, offs = [], []
        for i in range(first, last + 1):
            rec, off = self.window(i)
            lo = max(start, self.window_starts[i]) - self.window_starts[i]
            hi = min(stop, self.window_starts[i + 1]) - self.window_starts[i]
            recs.append(rec[lo:hi])
            offs.append(off[lo:hi])
        return np.concatenate(recs), np.concatenate(offs)
