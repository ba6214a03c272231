"""The scoring engine of ``haloscope search``: an ensemble, this rank's chunks, one part each.

Pipeline (per rank): ``ChunkStream`` (this rank's unfinished chunks, split again over loader
workers, each read as ``Piece``s) -> ``score_stream`` (every model of the ensemble on each
piece, optional D4 TTA) -> ``PartWriter`` (a chunk's rows, scored and rejected, written as
``parts/part-<rank>-<chunk>.parquet`` atomically once its last piece is scored).

On CUDA the loop never waits for the GPU between batches: a pool of pin threads page-locks
each piece, its host-to-device copy runs on a side stream (overlapping the previous piece's
model call), its logits are copied back to pinned host memory without blocking and an event
marks them; a piece is finished (and its chunk possibly written) only when ``LAG`` newer
pieces have been launched, so reading, copying and part writing overlap the model.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from haloscope.atomic import atomic_path
from haloscope.errors import CheckpointError
from haloscope.infer import predict
from haloscope.infer.run import checkpoint_settings
from haloscope.infer.search.inputs import Chunk, Piece, SearchInput
from haloscope.infer.tta import tta_logits
from haloscope.train.checkpoint import load_for_inference
from haloscope.train.failures import worker_batches

__all__ = [
    "LAG",
    "Ensemble",
    "ChunkStream",
    "PartWriter",
    "load_ensemble",
    "part_name",
    "done_chunks",
    "score_stream",
]

log = logging.getLogger(__name__)
LAG = 3
"""Pieces in flight on the GPU before the oldest is collected."""
_SAME = ("norm_method", "norm", "meta_columns", "stamp_px")
"""Settings every checkpoint of an ensemble must share."""


def part_name(rank: int, chunk: int) -> str:
    """``part-<rank>-<chunk>.parquet`` (zero-padded, so names sort by rank then chunk)."""
    return f"part-{rank:05d}-{chunk:07d}.parquet"


def done_chunks(parts_dir: Path) -> dict[int, Path]:
    """chunk -> its part file, for every finished chunk (by any rank of any earlier run)."""
    done: dict[int, Path] = {}
    for path in sorted(parts_dir.glob("part-*-*.parquet")):
        try:
            done.setdefault(int(path.stem.rsplit("-", 1)[1]), path)
        except ValueError:
            continue
    return done


@dataclass
class Ensemble:
    """The models of a search with their forwards and shared preprocessing settings."""

    forwards: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    settings: dict[str, Any]
    """norm_method, norm, meta_columns, stamp_px (shared by every model)."""
    infos: list[dict[str, Any]] = field(default_factory=list)

    def logits(self, images: torch.Tensor, meta: torch.Tensor, tta: bool) -> torch.Tensor:
        """(K, B) float32 logits of the K models."""
        outs = [tta_logits(f, images, meta) if tta else f(images, meta) for f in self.forwards]
        return torch.stack([o.float() for o in outs])


def load_ensemble(
    paths: Sequence[str], device: torch.device, *, use_bf16: bool, step: str, batch_size: int
) -> Ensemble:
    """Load every checkpoint (channels-last on CUDA) and its forward.

    Raises:
        CheckpointError: unreadable checkpoint, or checkpoints trained with different
            preprocessing (named setting and both files).
    """
    forwards, infos, first = [], [], None
    for path in paths:
        model, info = load_for_inference(path, device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        settings = checkpoint_settings(info)
        settings.setdefault("norm", {"method": settings["norm_method"]})
        if first is None:
            first = settings
        for key in _SAME:
            if settings.get(key) != first.get(key):
                raise CheckpointError(
                    f"--ckpt {path}: {key}={settings.get(key)!r} but {paths[0]} has "
                    f"{first.get(key)!r}; an ensemble needs one preprocessing"
                )
        forwards.append(
            predict.make_forward(model, device, use_bf16, step=step, batch_size=batch_size)
        )
        infos.append(info)
    assert first is not None
    return Ensemble(forwards, {k: first[k] for k in _SAME if k in first}, infos)


def _as_tensors(piece: Piece) -> Piece:
    # NOTE: torch tensors cross the loader's process boundary through shared memory,
    # numpy arrays through a pipe (a copy of every stamp)
    piece.images = torch.from_numpy(np.ascontiguousarray(piece.images))  # type: ignore[assignment]
    piece.meta = torch.from_numpy(np.ascontiguousarray(piece.meta, dtype=np.float32))  # type: ignore[assignment]
    return piece


class ChunkStream(IterableDataset):
    """Pieces of ``chunks`` (this rank's); loader worker ``w`` of ``W`` reads ``chunks[w::W]``."""

    def __init__(self, source: SearchInput, chunks: Sequence[Chunk], batch_size: int) -> None:
        super().__init__()
        self.source, self.chunks, self.batch_size = source, list(chunks), batch_size

    def __iter__(self) -> Iterator[Piece]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for chunk in self.chunks[worker::workers]:
            for piece in self.source.read(chunk, self.batch_size):
                yield _as_tensors(piece)


def _first(item: Any) -> Any:
    return item


PIN_THREADS = 4
"""Threads that page-lock decoded pieces on CUDA. On an H200 host one thread already keeps
up with the graphed ConvNeXt-Tiny step (71k cutouts/s, ``bench/results/search_gpu.json``:
1 and 4 threads both at 1.00 of it); the page faults and copies release the GIL, so more
threads leave headroom for faster devices and smaller models."""


def iter_pieces(
    source: SearchInput,
    chunks: Sequence[Chunk],
    batch_size: int,
    num_workers: int,
    *,
    pin_memory: bool = False,
) -> Iterable[Piece]:
    """This rank's pieces, decoded in ``num_workers`` processes (0: here), page-locked in
    order by ``PIN_THREADS`` threads when ``pin_memory`` (CUDA)."""
    stream = ChunkStream(source, chunks, batch_size)
    if num_workers == 0 or not chunks:
        return stream
    workers = min(num_workers, len(chunks))
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        collate_fn=_first,
        prefetch_factor=4,
    )
    pieces = worker_batches(iter(loader))  # a worker's error as one line
    return _pinned(pieces, PIN_THREADS, 2 * PIN_THREADS) if pin_memory else pieces


def _pinned(pieces: Iterator[Piece], threads: int, ahead: int) -> Iterator[Piece]:
    """``pieces`` page-locked by a pool of ``threads``, in order, at most ``ahead`` in flight."""
    device = torch.cuda.current_device()
    pool = ThreadPoolExecutor(
        max_workers=threads,
        thread_name_prefix="search-pin",
        initializer=torch.cuda.set_device,
        initargs=(device,),
    )
    queued: deque = deque()
    try:
        for piece in pieces:
            queued.append(pool.submit(piece.pin_memory))
            if len(queued) >= ahead:
                yield queued.popleft().result()
        while queued:
            yield queued.popleft().result()
    finally:
        for future in queued:
            future.cancel()
        pool.shutdown(wait=True)
        if hasattr(pieces, "close"):
            pieces.close()  # shut the loader workers down


@dataclass
class _Open:
    """A chunk being assembled from its pieces."""

    pieces: list[tuple[Piece, np.ndarray]] = field(default_factory=list)


class PartWriter:
    """Collects scored pieces per chunk; writes a chunk's part when its last piece arrives.

    Parts are written by one background thread (building the table, parquet, fsync), so the
    scoring loop never waits on the disk; ``close`` waits for them and raises their errors.
    """

    def __init__(self, parts_dir: Path, rank: int, num_models: int) -> None:
        self.parts_dir, self.rank, self.num_models = parts_dir, rank, num_models
        self.open: dict[int, _Open] = {}
        self.rows = 0
        self.written: list[Path] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-parts")
        self._pending: list = []

    def add(self, piece: Piece, logits: np.ndarray) -> None:
        """``logits``: (K, len(piece.kept)) float32."""
        piece.images = piece.meta = None  # type: ignore[assignment]  # scored: free the pixels
        self.open.setdefault(piece.chunk, _Open()).pieces.append((piece, logits))
        self.rows += len(piece.ids)
        if piece.last:
            state = self.open.pop(piece.chunk)
            self._pending.append(self._pool.submit(self._write, piece.chunk, state))
        while self._pending and self._pending[0].done():
            self.written.append(self._pending.pop(0).result())  # a failed write raises here

    def close(self, *, raising: bool = True) -> None:
        """Wait for every part being written; re-raise the first failure if ``raising``."""
        try:
            for future in self._pending:
                try:
                    self.written.append(future.result())
                except Exception:
                    if raising:
                        raise
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)

    def _write(self, chunk: int, state: _Open) -> Path:
        cols: dict[str, list] = {"pos": [], "id": [], "ra": [], "dec": [], "reason": []}
        per_model = []
        for piece, logits in state.pieces:
            n = len(piece.ids)
            full = np.full((self.num_models, n), np.nan, np.float32)
            full[:, piece.kept] = logits
            per_model.append(full)
            cols["pos"].append(piece.pos)
            cols["id"].append(piece.ids.astype(str))
            cols["ra"].append(piece.ra)
            cols["dec"].append(piece.dec)
            cols["reason"].append(np.array([piece.reasons.get(i) for i in range(n)], dtype=object))
        each = np.concatenate(per_model, axis=1)  # (K, rows)
        data = {k: np.concatenate(v) for k, v in cols.items()}
        table = pa.table(
            {
                "pos": pa.array(data["pos"], pa.int64()),
                "id": pa.array(data["id"], pa.string()),
                "ra": pa.array(data["ra"], pa.float64()),
                "dec": pa.array(data["dec"], pa.float64()),
                "reason": pa.array(data["reason"].tolist(), pa.string()),
                "logit": pa.array(each.astype(np.float64).mean(axis=0).astype(np.float32)),
                **{f"logit_{k}": pa.array(each[k]) for k in range(self.num_models)},
            }
        )
        path = self.parts_dir / part_name(self.rank, chunk)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path


def _to_device(
    piece: Piece, device: torch.device, copy_stream
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32, meta) on the device; on CUDA copied on ``copy_stream``, which the
    current (model) stream waits for."""
    images, meta = piece.images, piece.meta
    if copy_stream is None:
        return images.float(), meta  # float16 -> the trainer's float32
    if not images.is_pinned():  # no loader pin thread (--num-workers 0)
        images, meta = images.pin_memory(), meta.pin_memory()
    compute = torch.cuda.current_stream(device)
    with torch.cuda.stream(copy_stream):
        images = images.to(device, non_blocking=True)
        meta = meta.to(device, non_blocking=True)
    compute.wait_stream(copy_stream)
    images.record_stream(compute)  # the allocator must not reuse them before the model ran
    meta.record_stream(compute)
    return images.float(), meta


def _launch(ensemble: Ensemble, piece: Piece, device: torch.device, tta: bool, copy_stream):
    """Start scoring a piece; returns (host logits (K, k) tensor, CUDA event or None)."""
    k = len(piece.kept)
    if k == 0:
        return torch.zeros((len(ensemble.forwards), 0)), None
    images, meta = _to_device(piece, device, copy_stream)
    logits = ensemble.logits(images, meta, tta)
    if copy_stream is None:
        return logits, None
    host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(logits, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _progress_bar(total_rows: int | None, progress: bool) -> tqdm:
    """A bar of cutouts (its rate is cutouts/s), disabled unless ``progress``."""
    return tqdm(
        total=total_rows,
        unit="cutout",
        desc="search",
        disable=not progress,
        smoothing=0.1,
        dynamic_ncols=True,
    )


def score_stream(
    ensemble: Ensemble,
    pieces: Iterable[Piece],
    writer: PartWriter,
    device: torch.device,
    *,
    tta: bool,
    progress: bool,
    total_rows: int | None,
) -> tuple[int, float | None]:
    """Score every piece and hand it to ``writer``.

    Args:
        ensemble: the models.
        pieces: this rank's pieces (``iter_pieces``).
        writer: collects pieces into part files.
        device: the models' device.
        tta: D4 test-time augmentation.
        progress: tqdm bar of cutouts (its rate is cutouts/s).
        total_rows: rows expected on this rank (the bar's total).

    Returns:
        ``(rows handled, steady cutouts/s)``: the rate from the first scored piece to the
        last (worker start, graph capture and warm-up excluded; None for one piece).
    """
    bar = _progress_bar(total_rows, progress)
    inflight: deque = deque()
    copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    clock: dict[str, float] = {}

    def collect() -> None:
        piece, host, event = inflight.popleft()
        if event is not None:
            event.synchronize()
        writer.add(piece, host.numpy())
        bar.update(len(piece.ids))
        now = time.perf_counter()
        clock.setdefault("first", now)  # the first piece carries worker start and warm-up
        clock["last"], clock["rows"] = now, clock.get("rows", -len(piece.ids)) + len(piece.ids)

    try:
        with torch.no_grad():
            for piece in pieces:
                inflight.append((piece, *_launch(ensemble, piece, device, tta, copy_stream)))
                while len(inflight) > (LAG if device.type == "cuda" else 0):
                    collect()
            while inflight:
                collect()
    except BaseException:
        writer.close(raising=False)  # finished chunks still land; the error is the loop's
        raise
    finally:
        bar.close()
    writer.close()
    span = clock.get("last", 0.0) - clock.get("first", 0.0)
    return writer.rows, (clock["rows"] / span if span > 0 else None)
