"""The distributed streaming reader: an IterableDataset of whole batches over the manifest.

No per-sample Python work: shards are memory-mapped and indexed once per worker
(``shards/index.py``), a batch is gathered record by record with ``np.take`` into one array
per field (allocated directly in shared memory inside workers, so crossing the worker
boundary costs no copy), and one tensor per field is yielded. Which samples go where is the
pure function of ``shards/plan.py``: identical batch counts on every rank, an order fixed by
(seed, epoch) whatever the number of workers, and a position that can be saved and restored.

The split may also be a URL (``shards/remote.py``): the manifest is read first, then each
shard is either downloaded whole into a verified local cache (``cache_dir``) and
memory-mapped from there, or, without a cache, read one packed record at a time with range
requests. The plan, and so every guarantee above, is the same for every source.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from haloscope.errors import ConfigError, DataError
from haloscope.shards.index import (
    RecordView,
    index_record_bytes,
    open_shard,
    record_spans,
    walk_record_spans,
)
from haloscope.shards.manifest import load_manifest
from haloscope.shards.plan import EpochPlan, rank_span
from haloscope.shards.remote import (
    RemotePath,
    ShardCache,
    open_source,
    split_location,
)
from haloscope.shards.schema import STAMP_PX, TABLE_DTYPE
from haloscope.shards.write import sha256_file

__all__ = ["ShardReader", "ShardLoader", "build_loader", "DEFAULT_SHUFFLE_RECORDS"]

log = logging.getLogger(__name__)
DEFAULT_SHUFFLE_RECORDS = 16
"""Records per cross-record shuffle window (16 x 256 = 4,096 samples)."""


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """A tensor, in shared memory when ``shared`` (workers), so IPC needs no copy."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    return torch.empty(0, dtype=dtype).set_(storage).view(-1)[: int(np.prod(shape))].view(shape)


class ShardReader(IterableDataset):
    """Batches of one split's shards for one rank.

    Args:
        split_dir: ``SHARDS/<split>`` holding ``manifest.json`` and the shards: a folder, or
            an ``http(s)://``, ``s3://`` (or other fsspec) URL.
        batch_size: samples per batch (per rank).
        seed: seed of the epoch order (same on every rank).
        rank: this process's rank.
        world_size: number of ranks.
        shuffle: training order (seeded permutation + cross-record window shuffle) if True,
            manifest order if False.
        drop_last: equal full batches on every rank (leftovers vary by epoch) if True; every
            sample exactly once with ``valid = False`` padding if False.
        with_table: also yield the per-sample ``table`` (numpy structured, TABLE_DTYPE).
        shuffle_records: records per shuffle window.
        verify: check each shard's sha256 against the manifest when first opened.
        max_open_shards: memory maps kept open per worker.
        cache_dir: for a URL, a local folder caching whole verified shards (shared by
            workers, runs and processes); None: read records by range requests, no disk.
            Ignored for a local folder.
        cache_bytes: the cache's bound; least recently used shards are removed past it
            (None: ``HALOSCOPE_CACHE_MAX_GB`` GiB, else 200 GiB).

    Raises:
        DataError: missing/corrupt manifest, a split without samples, missing shard, or a
            shard whose size disagrees with the manifest.
        ConfigError: invalid arguments, or too few samples for one batch per rank.
    """

    def __init__(
        self,
        split_dir: str | Path | RemotePath,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
        with_table: bool = False,
        shuffle_records: int = DEFAULT_SHUFFLE_RECORDS,
        verify: bool = False,
        max_open_shards: int = 64,
        cache_dir: str | Path | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or shuffle_records < 1:
            raise ConfigError(
                f"ShardReader: need batch_size >= 1, 0 <= rank < world_size, "
                f"shuffle_records >= 1 (got {batch_size}, {rank}, {world_size}, "
                f"{shuffle_records})"
            )
        self.source = open_source(split_location(split_dir))
        self.manifest = load_manifest(split_dir)  # first: everything else follows from it
        self.cache = (
            ShardCache(cache_dir, cache_bytes)
            if cache_dir is not None and self.source.is_remote
            else None
        )
        if self.manifest.num_samples == 0:
            rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.manifest.rejected.items()))
            raise DataError(
                f"{split_dir}: split {self.manifest.split} has no samples; the conversion "
                f"accepted none of its {self.manifest.counts.get('input_rows', 0)} input rows "
                f"(rejected: {rejected or 'none'}); fix the input or use another split"
            )
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle, self.drop_last, self.with_table = shuffle, drop_last, with_table
        self.shuffle_records, self.verify, self.max_open_shards = (
            shuffle_records,
            verify,
            max_open_shards,
        )
        self.num_meta = len(self.manifest.meta_columns)
        self._check_files()
        shards = self.manifest.shards
        self._rec_counts = np.array([n for s in shards for n in s["records"]], dtype=np.int64)
        self._rec_shard = np.repeat(np.arange(len(shards)), [len(s["records"]) for s in shards])
        self._rec_local = (
            np.concatenate([np.arange(len(s["records"])) for s in shards])
            if shards
            else np.empty(0, np.int64)
        )
        self._span = rank_span(self.manifest.num_samples, world_size, rank, batch_size, drop_last)
        if self._span[2] == 0:
            raise ConfigError(
                f"{split_dir}: {self.manifest.num_samples} samples are fewer than "
                f"world_size * batch_size = {world_size * batch_size}; lower "
                "--batch-size or use drop_last=False"
            )
        self.epoch, self._start_batch, self._consumed = 0, 0, 0
        self._num_epochs, self._per_epoch = 1, self._span[2]
        self._open: OrderedDict[int, list[RecordView]] = OrderedDict()
        self._ring_slots, self._ring_next, self._pin_out = 0, 0, False
        self._ring: list[dict[str, torch.Tensor]] | None = None
        self._verified: set[int] = set()
        self._spans: dict[int, list[tuple[int, int]]] = {}
        self._records: OrderedDict[int, RecordView] = OrderedDict()
        self._max_records = 2 * shuffle_records + 2  # a batch spans at most two windows

    def _check_files(self) -> None:
        """Every shard exists with the manifest's size (a cached shard is verified already)."""
        entries = self.manifest.shards
        if self.cache is not None:
            entries = [e for e in entries if self.cache.lookup(e["sha256"]) is None]
        if not self.source.is_remote:
            sizes = [_local_size(self.source.describe(e["file"])) for e in entries]
        else:  # one request per shard: the first alone (it makes the client), then 8 at a time
            sizes = [self.source.size(e["file"]) for e in entries[:1]]
            with ThreadPoolExecutor(8) as pool:
                sizes += pool.map(lambda e: self.source.size(e["file"]), entries[1:])
        for entry, size in zip(entries, sizes, strict=True):
            if size != entry["bytes"]:
                raise DataError(
                    f"{self.source.describe(entry['file'])}: {size} bytes but the manifest says "
                    f"{entry['bytes']} (truncated or replaced shard; re-run `haloscope shards`)"
                )

    # ----------------------------------------------------------------- position
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields, from its start."""
        self.epoch, self._start_batch, self._consumed = int(epoch), 0, 0

    def span_epochs(self, num_epochs: int, batches_per_epoch: int | None = None) -> None:
        """Let one iteration run on through ``num_epochs`` epochs from the current position,
        so a loader's worker processes live for all of them (a trainer's whole run).

        Epoch ``e`` yields its first ``batches_per_epoch`` batches (None: all) in its own
        (seed, e) order, exactly as ``set_epoch(e)`` would; workers take the spanned
        batches in turn, so the order does not depend on their number. ``mark_consumed``
        and ``state_dict`` then do not follow the epochs: the caller keeps the position.
        """
        per = self.batches_per_rank() if batches_per_epoch is None else batches_per_epoch
        if num_epochs < 1 or not 1 <= per <= self.batches_per_rank():
            raise ConfigError(
                f"span_epochs: need num_epochs >= 1 and 1 <= batches_per_epoch <= "
                f"{self.batches_per_rank()}, got {num_epochs}, {per}"
            )
        self._num_epochs, self._per_epoch = int(num_epochs), int(per)

    def _positions(self, start: int) -> Iterator[tuple[int, int]]:
        """(epoch, batch) pairs of one iteration, from batch ``start`` of the current epoch."""
        for epoch in range(self.epoch, self.epoch + self._num_epochs):
            for k in range(start if epoch == self.epoch else 0, self._per_epoch):
                yield epoch, k

    def batches_per_rank(self) -> int:
        """Batches every rank yields per epoch (from the manifest counts)."""
        return self._span[2]

    def __len__(self) -> int:
        return self.batches_per_rank()

    def state_dict(self) -> dict[str, Any]:
        """Position: epoch and batches consumed by the caller, plus what they depend on."""
        return {
            "epoch": self.epoch,
            "batches_consumed": self._consumed,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "num_samples": self.manifest.num_samples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "shuffle_records": self.shuffle_records,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields exactly the batches after the saved position.

        Raises:
            ConfigError: the state was saved with a different seed, world size, batch size,
                sample count or order setting (the remaining samples would differ).
        """
        current = self.state_dict()
        for key in (
            "seed",
            "world_size",
            "batch_size",
            "num_samples",
            "shuffle",
            "drop_last",
            "shuffle_records",
        ):
            if key in state and state[key] != current[key]:
                raise ConfigError(
                    f"loader state has {key}={state[key]!r} but this reader has "
                    f"{current[key]!r}; resume with the same settings"
                )
        self.epoch = int(state["epoch"])
        self._start_batch = self._consumed = int(state["batches_consumed"])

    # ----------------------------------------------------------------- for ShardLoader
    @property
    def start_batch(self) -> int:
        """The batch of the epoch the next iteration starts at (a loaded position, else 0)."""
        return self._start_batch

    def with_output(self, *, ring_slots: int, pinned: bool) -> ShardReader:
        """A shallow copy of this reader that allocates its batch tensors this way: the
        object a loader iterates in-process or hands to its worker processes, so this
        reader's own settings never change (it shares the open-shard caches of this process).

        Args:
            ring_slots: shared-memory slots each worker process cycles through instead of a
                fresh segment per batch (0: fresh).
            pinned: in-process iteration gathers straight into pinned memory.
        """
        if ring_slots < 0:
            raise ValueError(f"with_output: ring_slots must be >= 0, got {ring_slots}")
        view = copy.copy(self)
        view._ring_slots, view._pin_out, view._ring, view._ring_next = ring_slots, pinned, None, 0
        return view

    def clear_start_batch(self) -> None:
        """Drop the resume position here: the loader's copy (:meth:`with_output`) took it
        (iterating this reader itself clears it on its own)."""
        self._start_batch = 0

    def mark_consumed(self, batches_consumed: int) -> None:
        """Record that the caller has taken the epoch's batches before ``batches_consumed``
        (the position :meth:`state_dict` saves)."""
        self._consumed = batches_consumed

    # ----------------------------------------------------------------- reading
    @property
    def is_ranged(self) -> bool:
        """Records are read by range requests (a URL without a cache)."""
        return self.source.is_remote and self.cache is None

    def _record(self, r: int) -> RecordView:
        """Record ``r`` (numbered over all shards) of whichever source."""
        shard, local = int(self._rec_shard[r]), int(self._rec_local[r])
        if not self.is_ranged:
            return self._records_of(shard)[local]
        view = self._records.get(r)
        if view is None:
            view = self._fetch_record(shard, local)
            self._records[r] = view
            if len(self._records) > self._max_records:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(r)
        return view

    def _fetch_record(self, shard: int, local: int) -> RecordView:
        """One record by a range request: its span predicted from the manifest, or walked
        from the tar headers when the shard is laid out otherwise."""
        entry = self.manifest.shards[shard]
        name, what = entry["file"], self.source.describe(entry["file"])
        if self.verify and shard not in self._verified:
            if hashlib.sha256(self.source.read(name)).hexdigest() != entry["sha256"]:
                raise DataError(f"{what}: sha256 differs from the manifest (corrupt shard)")
            self._verified.add(shard)
        spans = self._spans.get(shard)
        if spans is None:
            spans = self._spans[shard] = record_spans(entry["records"], self.num_meta)
        expected = entry["records"][local]
        data = self.source.read(name, *spans[local])  # a failed transfer raises here
        try:
            return index_record_bytes(data, what, local, expected, self.num_meta)
        except DataError:  # not the bytes the prediction expected: find the real spans
            walked = walk_record_spans(
                lambda a, b: self.source.read(name, a, b),
                entry["bytes"],
                what,
                len(entry["records"]),
            )
            if walked == spans:
                raise
            log.info(
                "%s: laid out unlike this haloscope's writer; records located by walking "
                "its tar headers",
                what,
            )
            self._spans[shard] = walked
            return index_record_bytes(
                self.source.read(name, *walked[local]), what, local, expected, self.num_meta
            )

    def _records_of(self, shard: int) -> list[RecordView]:
        views = self._open.get(shard)
        if views is not None:
            self._open.move_to_end(shard)
            return views
        entry = self.manifest.shards[shard]
        if self.cache is not None:  # verified when it entered the cache
            path = self.cache.fetch(self.source, entry)
        else:
            path = Path(self.source.describe(entry["file"]))
            if self.verify and shard not in self._verified:
                if sha256_file(path) != entry["sha256"]:
                    raise DataError(f"{path}: sha256 differs from the manifest (corrupt shard)")
                self._verified.add(shard)
        views = open_shard(path, entry["records"], self.num_meta)
        self._open[shard] = views
        if len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return views

    def _shapes(self, rows: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {
            "image": ((rows, 3, STAMP_PX, STAMP_PX), torch.float16),
            "label": ((rows,), torch.float32),
            "meta": ((rows, self.num_meta), torch.float32),
            "valid": ((rows,), torch.bool),
        }

    def zeros_batch(self, rows: int = 1) -> dict[str, torch.Tensor]:
        """A batch of ``rows`` zero rows with this reader's fields, shapes and dtypes (what a
        graphed step is captured from before the first real batch arrives)."""
        return {k: torch.zeros(shape, dtype=dt) for k, (shape, dt) in self._shapes(rows).items()}

    def _alloc(self, shared: bool) -> dict[str, torch.Tensor]:
        shapes = self._shapes(self.batch_size)
        if self._pin_out and not shared:  # gather straight into (cached) pinned memory
            return {
                k: torch.empty(shape, dtype=dt, pin_memory=True)
                for k, (shape, dt) in shapes.items()
            }
        return {k: _empty(shape, dt, shared) for k, (shape, dt) in shapes.items()}

    def _buffers(self, shared: bool) -> dict[str, torch.Tensor]:
        """Output tensors: fresh, or (workers under ``ShardLoader``) a reused shared slot.

        A fresh shared-memory segment per batch costs more than gathering the batch, so
        workers started by ``ShardLoader`` cycle through ``_ring_slots`` segments; the loader
        copies each batch out before the worker can reach that slot again (a worker is never
        more than ``prefetch_factor`` batches ahead of the consumer).
        """
        if not (shared and self._ring_slots):
            return self._alloc(shared)
        if self._ring is None:
            self._ring = [self._alloc(True) for _ in range(self._ring_slots)]
        slot = self._ring[self._ring_next % self._ring_slots]
        self._ring_next += 1
        return slot

    def _gather(self, rec: np.ndarray, off: np.ndarray, shared: bool) -> dict[str, Any]:
        b, n = self.batch_size, len(rec)
        out = self._buffers(shared)
        img_np, meta_np = out["image"].numpy(), out["meta"].numpy()
        table = np.zeros(b, dtype=TABLE_DTYPE)
        # group the batch by record: one np.take per record and field, no per-sample work
        order = np.argsort(rec, kind="stable")
        rec, off = rec[order], off[order]
        bounds = np.flatnonzero(np.diff(rec)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n], strict=False):
            if lo == hi:  # an all-padding batch (a short rank in exact eval mode)
                continue
            view = self._record(int(rec[lo]))
            idx = off[lo:hi]
            np.take(view.image, idx, axis=0, out=img_np[lo:hi])
            np.take(view.meta, idx, axis=0, out=meta_np[lo:hi])
            table[lo:hi] = view.table[idx]
        if n < b:
            img_np[n:] = 0
            meta_np[n:] = 0
        out["valid"].numpy()[:] = np.arange(b) < n
        out["label"].numpy()[:] = table["label"]
        out = dict(out)
        if self.with_table:
            out["table"] = table
        return out

    def _batch(self, plan: EpochPlan, k: int, shared: bool) -> dict[str, Any]:
        start, stop, _ = self._span
        lo = start + k * self.batch_size
        rec, off = plan.locate(lo, min(lo + self.batch_size, stop))
        return self._gather(rec, off, shared)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        start = self._start_batch
        self._start_batch = 0  # a resume position applies to one iteration only
        plan = None
        for i, (epoch, k) in enumerate(self._positions(start)):
            if i % num_workers != worker:  # one epoch: k = start + worker (mod num_workers)
                continue
            if plan is None or plan.epoch != epoch:
                plan = EpochPlan(
                    self._rec_counts, self.seed, epoch, self.shuffle, self.shuffle_records
                )
            batch = self._batch(plan, k, shared=info is not None)
            if info is None:
                self._consumed = k + 1
            yield batch


def _local_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: shard listed in the manifest is missing") from None


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


class ShardLoader:
    """Iterable of batch dicts over a ``ShardReader`` through a torch ``DataLoader``.

    Tracks the batches handed to the caller in the reader, so ``reader.state_dict()`` taken
    between batches is the exact resume position.
    """

    def __init__(
        self,
        reader: ShardReader,
        *,
        num_workers: int,
        pin_memory: bool,
        prefetch_factor: int,
        pin_thread: bool = True,
    ) -> None:
        self.reader, self.num_workers = reader, num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.prefetch_factor = prefetch_factor
        # with workers, pinning is the copy out of the worker's slot: either in the
        # DataLoader's pin thread (overlaps the training step) or in the consuming thread
        self.pin_thread = pin_thread and self.pin_memory and num_workers > 0

    def _own(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Copy a worker's ring slot out (into pinned memory when pinning): one copy total."""
        out = dict(batch)
        if self.pin_thread:  # the pin thread already copied the slot into pinned memory
            return out
        for key in ("image", "label", "meta", "valid"):
            src = batch[key]
            if self.num_workers > 0:
                dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=self.pin_memory)
                out[key] = dst.copy_(src)
            elif self.pin_memory and not src.is_pinned():
                out[key] = src.pin_memory()
        return out

    def __len__(self) -> int:
        return self.reader.batches_per_rank() - self.reader.start_batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Start the workers now (they fork and begin reading at once, before the first
        ``next``) and return the iterator of the batches; closing it, or dropping it, shuts
        the workers down."""
        reader = self.reader
        start = reader.start_batch
        pinned = self.pin_memory and self.num_workers == 0
        view = reader.with_output(
            ring_slots=self.prefetch_factor + 2 if self.num_workers > 0 else 0, pinned=pinned
        )
        loader = torch.utils.data.DataLoader(
            view,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_thread,
            collate_fn=_identity,
            persistent_workers=False,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
        )
        batches = iter(loader)  # workers fork here, taking the view's resume position along
        reader.clear_start_batch()  # the view has it
        return self._handed_out(batches, start)

    def _handed_out(
        self, batches: Iterator[dict[str, Any]], start: int
    ) -> Iterator[dict[str, Any]]:
        # NOTE: a generator holding the DataLoader iterator: closed before its first batch,
        # it drops that iterator, and torch shuts the workers down
        reader = self.reader
        for i, batch in enumerate(batches):
            batch = self._own(batch)
            reader.mark_consumed(start + i + 1)
            yield batch


def build_loader(
    reader: ShardReader,
    *,
    num_workers: int,
    pin_memory: bool = True,
    prefetch_factor: int = 4,
    pin_thread: bool = True,
) -> ShardLoader:
    """Wrap ``reader`` in worker processes.

    Args:
        reader: the rank's reader (call ``set_epoch`` on it before each epoch).
        num_workers: loader processes (0 = read in the calling process).
        pin_memory: pin batches (DataLoader pin thread) when CUDA is available.
        prefetch_factor: batches each worker prepares ahead.
        pin_thread: with workers and pinning, pin in the DataLoader's pin thread (True) or
            in the consuming thread (False); either way it is the one copy out of the
            worker's shared-memory slot.

    Returns:
        An iterable of batch dicts: ``image`` float16 (B,3,64,64), ``label`` float32 (B,),
        ``meta`` float32 (B,M) raw, ``valid`` bool (B,), ``table`` when ``with_table``.
    """
    if num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {num_workers}")
    return ShardLoader(
        reader,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor,
        pin_thread=pin_thread,
    )
