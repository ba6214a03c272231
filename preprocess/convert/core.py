"""The parquet -> shards converter (``haloscope shards``), lens-specific half.

Pass 1, one unit per input file: stream record batches, apply the contract's gates and the
resolvability cut (``gates.gate_batch``), refuse rows with non-finite meta or ids too long
for the schema (counted), normalise (``normalize.normalize``, ``--norm-method``) to float16, flag
controls found in the hard-negative lookup and, in the train split only, repeat them
``hard_neg_weight`` times (``copy`` 0..w-1), and spill every sample into hash buckets
(``shards/buckets.py``).
Pass 2, one unit per bucket: de-duplicate pixel-identical rows, shuffle, write one shard.
The manifest step (``shards/assemble.py``) runs when every part of every split exists.
Orchestration (tasks, workers, resume) lives in ``preprocess/convert/run.py``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from haloscope.config import option
from haloscope.errors import ConfigError
from haloscope.preprocess.config import PreprocessConfig
from haloscope.preprocess.gates import column_f64, gate_batch, labels_of, theta_over_psf
from haloscope.preprocess.hardneg import HardNegLookup
from haloscope.preprocess.normalize import normalize
from haloscope.preprocess.read_parquet import iter_record_batches
from haloscope.preprocess.schema import (
    REQUIRED_COLUMNS,
    SPLITS,
    STRATA_COLUMNS,
)
from haloscope.shards.buckets import open_part, row_dtype, shuffle_keys, stamp_digests
from haloscope.shards.schema import RECORD_SAMPLES, TABLE_DTYPE, encode_control_kind

__all__ = [
    "ConvertConfig",
    "rows_of_batch",
    "convert_file",
]

log = logging.getLogger(__name__)

_ORDER_SHIFT = 40  # order = (file index << 40) | row index in file


@dataclass(frozen=True, kw_only=True)
class ConvertConfig(PreprocessConfig):
    """Settings of one ``haloscope shards`` run (each field is the flag of the same name);
    the seed's preprocessing settings are ``PreprocessConfig``'s."""

    data: Path
    """Hive-partitioned parquet root."""
    out: Path
    """Output root; one directory per split."""
    splits: tuple[str, ...] = SPLITS
    """Comma-separated splits to convert."""
    train_min_arc_snr: float = 0.0
    """Drop lenses with arc_snr below this from the train split only (0 = keep all)."""
    record_samples: int = RECORD_SAMPLES
    """Samples per packed record."""
    shard_samples: int = 4096
    """Target samples per shard (= per bucket; actual counts vary by a few percent)."""
    task_index: int = 0
    """This task's index (the CLI's default: from SLURM_ARRAY_TASK_ID, else 0)."""
    num_tasks: int = 1
    """Tasks sharing the work (the CLI's default: SLURM_ARRAY_TASK_COUNT, else 1)."""
    workers: int = 1
    """Worker processes of this task; the shards do not depend on them."""
    seed: int = 0
    """Seed of the global shuffle."""
    batch_rows: int = 1024
    """Parquet rows per record batch in pass 1."""
    stage: str = option("all", choices=("all", "pass1", "pass2", "manifest"))
    """Run one stage only (cluster pipelines); all waits for the other tasks' parts."""
    wait_timeout_s: float = 86400.0
    """How long --stage all waits for the other tasks' parts [s]."""
    keep_work: bool = False
    """Keep the pass-1 bucket files in <out>/_work after success."""
    progress: bool = True
    """Progress bars on stderr."""
    command: tuple[str, ...] = option((), cli=False)
    """The command line, stored in the manifests (set by the CLI)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (
                self.train_min_arc_snr >= 0,
                f"--train-min-arc-snr must be >= 0, got {self.train_min_arc_snr}",
            ),
            (
                1 <= self.record_samples <= 65536,
                f"--record-samples must be 1..65536, got {self.record_samples}",
            ),
            (
                self.shard_samples >= self.record_samples,
                f"--shard-samples must be >= --record-samples, got {self.shard_samples}",
            ),
            (
                self.num_tasks >= 1 and 0 <= self.task_index < self.num_tasks,
                f"--task-index must be in 0..{self.num_tasks - 1} (--num-tasks {self.num_tasks}), got {self.task_index}",
            ),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (
                self.stage in ("all", "pass1", "pass2", "manifest"),
                f"--stage must be all|pass1|pass2|manifest, got {self.stage!r}",
            ),
            (
                all(s in SPLITS for s in self.splits) and self.splits,
                f"--splits must be a subset of {SPLITS}, got {self.splits}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def hard_neg_copies(self, split: str) -> int:
        """Copies of each control matched by the lookup: the weight in train, else 1."""
        return self.hard_neg_weight if split == "train" and self.hard_neg_path else 1

    def min_arc_snr(self, split: str) -> float:
        """Lenses with a lower arc_snr are dropped: ``train_min_arc_snr`` in train, else 0."""
        return self.train_min_arc_snr if split == "train" else 0.0


def _encode_ids(col: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    values = [(v or "").encode("utf-8") for v in col.to_pylist()]
    fits = np.array([len(v) <= width for v in values], dtype=bool)
    return np.array([v if len(v) <= width else b"" for v in values], dtype=f"S{width}"), fits


def _table_rows(sub: pa.RecordBatch, task: np.ndarray, brick: np.ndarray) -> np.ndarray:
    table = np.zeros(sub.num_rows, dtype=TABLE_DTYPE)
    labels = labels_of(sub)
    _, psf = theta_over_psf(sub)
    table["label"] = labels
    table["ra"], table["dec"] = column_f64(sub, "ra"), column_f64(sub, "dec")
    table["psf_fwhm_r"] = psf
    for name in (
        "theta_e_arcsec",
        "psfsize_r",
        "psfdepth_r",
        "arc_snr",
        "src_dmag",
        "src_reff_arcsec",
    ):
        table[name] = column_f64(sub, name)
    for name in STRATA_COLUMNS:  # optional truth: NaN where the table has none
        table[name] = column_f64(sub, name) if name in sub.schema.names else np.nan
    if "control_kind" in sub.schema.names:
        kinds = encode_control_kind(sub.column("control_kind").to_pylist())
        table["control_kind"] = np.where(labels == 0, kinds, 0)
    table["task_id"], table["brickname"] = task, brick
    return table


def rows_of_batch(
    batch: pa.RecordBatch,
    *,
    cfg: ConvertConfig,
    file_index: int,
    row_offset: int,
    lookup: HardNegLookup | None,
    hard_neg_weight: int,
    min_arc_snr: float = 0.0,
) -> tuple[np.ndarray, Counter, Counter]:
    """Gate, normalise, flag and duplicate one record batch into spill rows.

    ``hard_neg_weight`` is the copies of each matched control: ``cfg.hard_neg_weight`` in the
    train split, 1 in val/test, where a match is flagged and counted but never duplicated (a
    duplicate there would bias every false-positive rate and early stopping).
    ``min_arc_snr`` (train only, ``cfg.min_arc_snr``) rejects lenses with a lower ``arc_snr``
    as ``below_train_arc_snr``.

    Returns:
        ``(rows, rejected, counts)``: ``row_dtype`` samples (hard negatives repeated),
        rejected rows by reason, and ``accepted_rows``/``hard_neg_matches``/
        ``lookup_lens_matches`` counts.
    """
    gate = gate_batch(batch, cfg.min_theta_over_psf)
    rejected, counts = Counter(gate.rejected), Counter()
    sub = batch.take(pa.array(gate.kept))
    meta = (
        np.stack([column_f64(sub, c) for c in cfg.meta_cols], axis=1).astype(np.float32)
        if cfg.meta_cols
        else np.zeros((sub.num_rows, 0), np.float32)
    )
    task, task_ok = _encode_ids(sub.column("task_id"), TABLE_DTYPE["task_id"].itemsize)
    brick, brick_ok = _encode_ids(sub.column("brickname"), TABLE_DTYPE["brickname"].itemsize)
    meta_ok = np.isfinite(meta).all(axis=1)
    rejected["bad_meta"] += int((~meta_ok).sum())
    rejected["id_too_long"] += int((meta_ok & ~(task_ok & brick_ok)).sum())
    good = np.flatnonzero(meta_ok & task_ok & brick_ok)
    sub, stamps, meta = sub.take(pa.array(good)), gate.stamps[good], meta[good]
    table = _table_rows(sub, task[good], brick[good])
    if min_arc_snr > 0:
        faint = (table["label"] == 1) & ~(table["arc_snr"] >= min_arc_snr)  # NaN counts as faint
        rejected["below_train_arc_snr"] += int(faint.sum())
        keep = np.flatnonzero(~faint)
        good, stamps, meta, table = good[keep], stamps[keep], meta[keep], table[keep]
    is_lens = table["label"] == 1
    hard = np.zeros(len(good), dtype=bool)
    if lookup is not None:
        hit = lookup.match(table["ra"], table["dec"])
        hard = hit & ~is_lens
        counts["lookup_lens_matches"] += int((hit & is_lens).sum())
    counts["accepted_rows"] += len(good)
    counts["hard_neg_matches"] += int(hard.sum())  # before de-duplication
    repeats = np.where(hard, hard_neg_weight, 1)
    src = np.repeat(np.arange(len(good)), repeats)
    copy = (np.arange(len(src)) - np.repeat(np.cumsum(repeats) - repeats, repeats)).astype(np.uint8)
    digest = stamp_digests(stamps)
    rows = np.empty(len(src), dtype=row_dtype(len(cfg.meta_cols)))
    rows["image"] = normalize(stamps, cfg.norm_method).astype(np.float16)[src]
    rows["meta"], rows["table"] = meta[src], table[src]
    rows["table"]["hard_neg"] = hard[src]
    rows["table"]["copy"] = copy
    rows["copy"], rows["digest"] = copy, digest[src]
    rows["order"] = (file_index << _ORDER_SHIFT) | (row_offset + gate.kept[good][src])
    rows["hkey"] = shuffle_keys(digest[src], copy, cfg.seed)
    return rows, rejected, counts


def convert_file(
    cfg: ConvertConfig,
    path: Path,
    file_index: int,
    stem: Path,
    num_buckets: int,
    lookup: HardNegLookup | None,
    record: dict,
    hard_neg_weight: int,
    min_arc_snr: float = 0.0,
) -> dict:
    """Pass 1 for one parquet file: spill its samples into ``stem`` (a bucket part).

    Args:
        cfg: the run's settings.
        path: the input file.
        file_index: its index in the split's sorted file list (fixes the input order).
        stem: part path without suffix.
        num_buckets: buckets of the split.
        lookup: hard-negative lookup or None.
        record: identity fields stored in the part record (fingerprint, source).
        hard_neg_weight: copies of each matched control in this split (1 outside train).
        min_arc_snr: lenses below this arc_snr are dropped (0 outside train).

    Returns:
        The part record: input rows, rejected rows by reason, counts.
    """
    rejected, counts = Counter(), Counter()
    offset = 0
    with open_part(stem, num_buckets) as writer:
        for _, batch in iter_record_batches([path], extra=cfg.meta_cols, batch_rows=cfg.batch_rows):
            rows, rej, cnt = rows_of_batch(
                batch,
                cfg=cfg,
                file_index=file_index,
                row_offset=offset,
                lookup=lookup,
                hard_neg_weight=hard_neg_weight,
                min_arc_snr=min_arc_snr,
            )
            writer.add(rows)
            rejected.update(rej)
            counts.update(cnt)
            offset += batch.num_rows
    full = {
        **record,
        "input_rows": offset,
        "rejected": {k: v for k, v in sorted(rejected.items()) if v},
        "counts": dict(sorted(counts.items())),
    }
    return writer.write_record(stem, full)


def required_columns(cfg: ConvertConfig) -> dict[str, str]:
    """The contract's columns plus the meta columns (numeric)."""
    return {**REQUIRED_COLUMNS, **{c: "float" for c in cfg.meta_cols}}
