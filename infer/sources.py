"""Inputs of ``haloscope infer``: batches of model-ready stamps plus the scores-table columns.

Two sources give the *same* arrays for the same row:

- ``iter_parquet_batches``: raw contract parquet, through ``preprocess`` only (the contract's
  columns, gates, decode, the checkpoint's ``normalize`` method), in loader worker processes, then rounded to float16 exactly as the converter
  stores normalised stamps in shards, so the model sees the values it was trained on.
- ``iter_shard_batches``: the shard reader in exact (non-shuffled, padded) eval mode.

Each rank of a torchrun job reads a disjoint part: row groups ``k`` with
``k % (world_size * workers) == rank * workers + worker`` (parquet), or the shard reader's own
rank split (shards).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from haloscope.errors import ContractError
from haloscope.preprocess import gates
from haloscope.preprocess.normalize import normalize
from haloscope.preprocess.read_parquet import contract_columns
from haloscope.preprocess.schema import STRATA_COLUMNS
from haloscope.shards.schema import IMAGE_DTYPE, decode_control_kind, encode_control_kind
from haloscope.train.failures import worker_batches

__all__ = [
    "REJECT_KEYS",
    "ScoreBatch",
    "SourceStats",
    "ParquetScoreSource",
    "parquet_units",
    "iter_parquet_batches",
    "iter_shard_batches",
    "columns_from_table",
]

log = logging.getLogger(__name__)

REJECT_KEYS: tuple[str, ...] = (*gates.REASONS, "bad_meta", "hard_neg_copy")
"""Every reason a row is not scored: the gates', non-finite meta, extra hard-negative copies."""
_F32_STRATA = ("theta_e_arcsec", "psfsize_r", "psfdepth_r", "arc_snr", "src_dmag")


@dataclass
class ScoreBatch:
    """Model inputs and table columns of up to one batch of kept rows."""

    images: np.ndarray
    """(K, 3, 64, 64) float16 normalised stamps, bands g, r, z."""
    meta: np.ndarray
    """(K, M) float32 raw meta values in the checkpoint's column order (NaN = missing)."""
    columns: dict[str, np.ndarray]
    """Scores-table columns (without split, logit, score, model), K rows each."""


@dataclass
class SourceStats:
    """What one rank read: rows seen, kept and rejected by reason."""

    rows_read: int = 0
    rows_kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    """reason -> rows (the gate reasons of ``preprocess.gates``, plus ``hard_neg_copy``)."""


def _strings(batch: pa.RecordBatch, name: str, kept: np.ndarray) -> np.ndarray:
    values = batch.column(name).take(pa.array(kept)).to_pylist()
    return np.array(values, dtype=object)


def _parquet_columns(batch: pa.RecordBatch, kept: np.ndarray) -> dict[str, np.ndarray]:
    """Table columns of the kept rows, with the precision the shards store them in."""
    _, psf = gates.theta_over_psf(batch)
    cols: dict[str, np.ndarray] = {
        "task_id": _strings(batch, "task_id", kept),
        "ra": gates.column_f64(batch, "ra")[kept],
        "dec": gates.column_f64(batch, "dec")[kept],
        "brickname": _strings(batch, "brickname", kept),
        "label": gates.labels_of(batch)[kept].astype(np.int8),
        "is_hard_neg": np.zeros(kept.size, dtype=bool),
        "psf_fwhm_r": psf[kept].astype(np.float32),
    }
    for name in _F32_STRATA:
        cols[name] = gates.column_f64(batch, name)[kept].astype(np.float32)
    for name in STRATA_COLUMNS:  # optional injection truth: NaN where the table has none
        values = gates.column_f64(batch, name)[kept] if name in batch.schema.names else np.nan
        cols[name] = np.broadcast_to(np.float32(values), kept.shape).copy()
    ratio = gates.theta_psf_ratio(cols["theta_e_arcsec"], cols["psf_fwhm_r"])
    cols["theta_over_psf"] = ratio.astype(np.float32)
    if "control_kind" in batch.schema.names:
        # Same vocabulary as the shards: unknown names -> "other", ""/lenses -> null.
        codes = encode_control_kind(_strings(batch, "control_kind", kept).tolist())
        codes = np.where(cols["label"] == 0, codes, 0)
        cols["control_kind"] = np.array(decode_control_kind(codes), dtype=object)
    else:
        cols["control_kind"] = np.full(kept.size, None, dtype=object)
    return cols


def _prepare(
    batch: pa.RecordBatch, meta_cols: Sequence[str], min_theta_over_psf: float, norm_method: str
) -> tuple[ScoreBatch | None, Counter, int]:
    """Gate, decode and normalise one record batch: (kept rows or None, rejected, rows read)."""
    result = gates.gate_batch(batch, min_theta_over_psf)
    rejected = Counter(result.rejected)
    meta = _parquet_meta(batch, result.kept, meta_cols)
    # NOTE: the converter refuses rows with non-finite meta ("bad_meta"); so do we, so
    # that both paths score the same rows and the model never sees inputs it never saw.
    meta_ok = np.isfinite(meta).all(axis=1)
    rejected["bad_meta"] += int((~meta_ok).sum())
    kept = result.kept[meta_ok]
    if kept.size == 0:
        return None, rejected, batch.num_rows
    images = normalize(result.stamps[meta_ok], norm_method).astype(IMAGE_DTYPE)  # as in shards
    cols = _parquet_columns(batch, kept)
    return ScoreBatch(images=images, meta=meta[meta_ok], columns=cols), rejected, batch.num_rows


def parquet_units(files: Sequence[Path]) -> list[tuple[Path, int]]:
    """Every (file, row group) of a split, in file order: the units ranks and workers share."""
    units = []
    for path in files:
        try:
            num_groups = pq.ParquetFile(path).metadata.num_row_groups
        except (pa.ArrowInvalid, OSError) as exc:
            raise ContractError(f"{path}: not a readable parquet file ({exc})") from None
        units += [(path, group) for group in range(num_groups)]
    return units


class ParquetScoreSource(IterableDataset):
    """This rank's prepared record batches; loader workers split the row groups further.

    Unit ``k`` (a row group, ``parquet_units``) goes to slot ``k % (world_size * workers)``,
    slot = ``rank * workers + worker``; each unit is read in record batches of at most
    ``batch_size`` rows, so batch composition (and every logit) does not depend on how many
    ranks or workers there are.
    """

    def __init__(
        self,
        files: Sequence[Path],
        *,
        meta_cols: Sequence[str],
        min_theta_over_psf: float,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        norm_method: str,
    ) -> None:
        super().__init__()
        self.units = parquet_units(files)
        self.meta_cols, self.cut, self.batch_size = tuple(meta_cols), min_theta_over_psf, batch_size
        self.norm_method = norm_method
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[tuple[ScoreBatch | None, Counter, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        for path, group in self.units[slot::slots]:
            columns = contract_columns(path, self.meta_cols)
            try:
                reader = pq.ParquetFile(path).iter_batches(
                    batch_size=self.batch_size, row_groups=[group], columns=columns
                )
                for batch in reader:
                    yield _prepare(batch, self.meta_cols, self.cut, self.norm_method)
            except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
                raise ContractError(f"{path}: cannot read row group {group}: {exc}") from None


def _as_is(item: object) -> object:
    return item


def iter_parquet_batches(
    files: Sequence[Path],
    *,
    meta_cols: Sequence[str],
    min_theta_over_psf: float,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    stats: SourceStats | None = None,
    norm_method: str,
) -> Iterator[ScoreBatch]:
    """Gate, decode and normalise this rank's part of a parquet split.

    Args:
        files: the split's parquet files (every rank must pass the same list).
        meta_cols: raw meta columns in the model's order (each must exist in every file).
        min_theta_over_psf: the resolvability cut the checkpoint's data was built with.
        batch_size: rows per record batch, so a model call never exceeds it.
        rank: this process's rank (see ``ParquetScoreSource`` for the split).
        world_size: number of ranks.
        num_workers: decoding processes (0: decode in this process).
        stats: updated in place with rows read, kept and rejected by reason.
        norm_method: the checkpoint's stamp normalisation (``preprocess.normalize``).

    Yields:
        One ``ScoreBatch`` per record batch with at least one kept row.

    Raises:
        ContractError: a file cannot be read or lacks a required or meta column.
    """
    stats = stats if stats is not None else SourceStats()
    source = ParquetScoreSource(
        files,
        meta_cols=meta_cols,
        min_theta_over_psf=min_theta_over_psf,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        norm_method=norm_method,
    )
    items: Iterable = source
    if num_workers > 0:
        loader = DataLoader(
            source, batch_size=None, num_workers=num_workers, collate_fn=_as_is, prefetch_factor=2
        )
        items = worker_batches(iter(loader))  # a worker's error as one line
    for prepared, rejected, rows_read in items:
        stats.rows_read += rows_read
        stats.rejected.update(rejected)
        if prepared is not None:
            stats.rows_kept += len(prepared.images)
            yield prepared


def _parquet_meta(batch: pa.RecordBatch, kept: np.ndarray, meta_cols: Sequence[str]) -> np.ndarray:
    """(K, M) float32 raw meta values of the kept rows (NULL -> NaN)."""
    if not meta_cols:
        return np.zeros((kept.size, 0), np.float32)
    return np.stack([gates.column_f64(batch, c)[kept] for c in meta_cols], axis=1).astype(
        np.float32
    )


def columns_from_table(table: np.ndarray) -> dict[str, np.ndarray]:
    """Scores-table columns from shard ``table.npy`` rows (``shards.schema.TABLE_DTYPE``)."""
    psf = table["psf_fwhm_r"].astype(np.float32)
    cols: dict[str, np.ndarray] = {
        "task_id": np.array([v.decode("utf-8") for v in table["task_id"]], dtype=object),
        "ra": table["ra"].astype(np.float64),
        "dec": table["dec"].astype(np.float64),
        "brickname": np.array([v.decode("utf-8") for v in table["brickname"]], dtype=object),
        "label": table["label"].astype(np.int8),
        "is_hard_neg": table["hard_neg"].astype(bool),
        "psf_fwhm_r": psf,
    }
    for name in (*_F32_STRATA, *STRATA_COLUMNS):
        cols[name] = table[name].astype(np.float32)
    cols["theta_over_psf"] = gates.theta_psf_ratio(cols["theta_e_arcsec"], psf).astype(np.float32)
    cols["control_kind"] = np.array(decode_control_kind(table["control_kind"]), dtype=object)
    return cols


def iter_shard_batches(
    loader: Iterator[dict], *, stats: SourceStats | None = None
) -> Iterator[ScoreBatch]:
    """Turn shard-reader batches into ``ScoreBatch``es.

    Padding rows (``valid`` False) and the extra copies of duplicated hard negatives
    (``copy`` > 0, counted as ``hard_neg_copy``) are dropped, so every sample is scored once.

    Args:
        loader: batches of ``ShardReader`` (``with_table=True``).
        stats: updated in place.

    Yields:
        One ``ScoreBatch`` per reader batch with at least one kept row.
    """
    stats = stats if stats is not None else SourceStats()
    for batch in loader:
        valid = np.asarray(batch["valid"], dtype=bool)
        table = batch["table"]
        first_copy = table["copy"] == 0
        keep = valid & first_copy
        stats.rows_read += int(valid.sum())
        stats.rows_kept += int(keep.sum())
        if int((valid & ~first_copy).sum()):
            stats.rejected["hard_neg_copy"] += int((valid & ~first_copy).sum())
        if not keep.any():
            continue
        idx = np.flatnonzero(keep)
        images = np.asarray(batch["image"])[idx]
        meta = np.asarray(batch["meta"], dtype=np.float32)[idx]
        yield ScoreBatch(images=images, meta=meta, columns=columns_from_table(table[idx]))
