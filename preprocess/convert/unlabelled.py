"""Label-free cutouts: parquet without truth columns, prepared as training prepares stamps.

The one preparation of an *unlabelled* record batch, shared by ``haloscope search`` (parquet
input) and ``haloscope shards --unlabelled``: only ``stamp_npz``, ``ra``, ``dec`` and the meta
columns are required. A row is kept or rejected for exactly one reason (``UNLABELLED_REASONS``):
``cutout_ok`` present and not 1, an r-only ``bandset`` or a stamp lacking a band
(``missing_band``), bytes that are no npz (``undecodable``), a band that is not 64x64
(``bad_shape``), a non-finite pixel (``non_finite``), a non-finite meta value (``bad_meta``),
non-finite ra/dec (``bad_position``). Kept stamps are normalised with the checkpoint's method
(``preprocess.normalize``) and rounded to float16, exactly as the converter stores them.

Ids: the first of ``ID_COLUMNS`` present (``id``, ``objid``, ``task_id``), as a string; else
``derive_ids``: ``J{ra:.5f}{dec:+.5f}`` (ra and dec in degrees, 5 decimals: 0.036 arcsec).

``write_unlabelled_shards`` writes such rows as one shard split (``<out>/search/``) in input
order, labels set to ``UNKNOWN_LABEL`` and ``"unlabelled": true`` in the manifest, which
``haloscope train`` refuses and ``haloscope search`` reads.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from haloscope.atomic import atomic_path
from haloscope.errors import ConfigError, ContractError
from haloscope.preprocess import decode as dec
from haloscope.preprocess.gates import column_f64
from haloscope.preprocess.normalize import norm_settings, normalize
from haloscope.shards.assemble import finish_stats, meta_stats
from haloscope.shards.manifest import MANIFEST_NAME, build_manifest, write_manifest
from haloscope.shards.schema import TABLE_DTYPE
from haloscope.shards.write import write_shard

__all__ = [
    "ID_COLUMNS",
    "UNLABELLED_REASONS",
    "UNKNOWN_LABEL",
    "SEARCH_SPLIT",
    "Prepared",
    "list_parquet",
    "id_column_of",
    "derive_ids",
    "read_columns",
    "prepare_unlabelled",
    "write_unlabelled_shards",
    "check_labelled",
]

log = logging.getLogger(__name__)

ID_COLUMNS: tuple[str, ...] = ("id", "objid", "task_id")
"""Id columns used when present, in this order of preference."""
UNLABELLED_REASONS: tuple[str, ...] = (
    "cutout_not_ok",
    "missing_band",
    "undecodable",
    "bad_shape",
    "non_finite",
    "bad_meta",
    "bad_position",
)
"""Why an unlabelled parquet row is not scored (one reason per row, checked in this order)."""
UNKNOWN_LABEL = 255
"""The shard table's ``label`` of an unlabelled sample (1 = lens, 0 = control otherwise)."""
SEARCH_SPLIT = "search"
"""The split directory ``haloscope shards --unlabelled`` writes."""
_DECODE_REASON = {
    dec.DECODE_UNDECODABLE: "undecodable",
    dec.DECODE_BAD_KEYS: "missing_band",
    dec.DECODE_BAD_SHAPE: "bad_shape",
}


@dataclass
class Prepared:
    """One record batch, prepared: kept rows model-ready, rejected rows with their reason."""

    rows: np.ndarray
    """(K,) int64 indices of the kept rows in the batch."""
    images: np.ndarray
    """(K, 3, 64, 64) float16 normalised stamps, bands g, r, z."""
    meta: np.ndarray
    """(K, M) float32 raw meta values in the requested order."""
    ids: np.ndarray
    """(N,) object: the id of every row of the batch (kept or not)."""
    ra: np.ndarray
    """(N,) float64."""
    dec: np.ndarray
    """(N,) float64."""
    reasons: dict[int, str] = field(default_factory=dict)
    """batch row -> reason, for the rejected rows."""

    @property
    def rejected(self) -> Counter:
        """reason -> rows."""
        return Counter(self.reasons.values())


def list_parquet(spec: str | Path) -> list[Path]:
    """The parquet files of a file, a directory (searched recursively) or a glob, sorted.

    Raises:
        ContractError: nothing matches.
    """
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    else:
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if p.endswith(".parquet"))
    if not files:
        raise ContractError(f"{text}: no parquet files (give a file, a directory or a glob)")
    return files


def id_column_of(names: Sequence[str], requested: str = "auto") -> str | None:
    """The id column to use: ``requested``, or with ``auto`` the first of ``ID_COLUMNS``."""
    if requested != "auto":
        return requested
    return next((c for c in ID_COLUMNS if c in names), None)


def derive_ids(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """``J{ra:.5f}{dec:+.5f}`` per row (e.g. ``J150.12345+2.54321``), as object strings."""
    return np.array(
        [f"J{r:.5f}{d:+.5f}" for r, d in zip(ra.tolist(), dec.tolist(), strict=True)], dtype=object
    )


def read_columns(path: Path, meta_cols: Sequence[str], id_column: str = "auto") -> list[str]:
    """Columns to read from an unlabelled parquet file.

    Raises:
        ContractError: ``stamp_npz``, ``ra``, ``dec``, a meta column or a requested id column
            is missing (all of them named in one line).
    """
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise ContractError(f"{path}: not a readable parquet file ({exc})") from None
    needed = ["stamp_npz", "ra", "dec", *meta_cols]
    if id_column != "auto":
        needed.append(id_column)
    missing = [c for c in needed if c not in names]
    if missing:
        raise ContractError(
            f"{path}: missing column(s) {', '.join(missing)} (search needs "
            "stamp_npz, ra, dec and the checkpoint's meta columns)"
        )
    optional = [c for c in ("cutout_ok", "bandset", id_column_of(names, id_column)) if c]
    return list(dict.fromkeys([*needed, *(c for c in optional if c in names)]))


def _ids(batch: pa.RecordBatch, ra: np.ndarray, dec_: np.ndarray, id_column: str) -> np.ndarray:
    name = id_column_of(batch.schema.names, id_column)
    if name is None:
        return derive_ids(ra, dec_)
    values = batch.column(name).cast(pa.string()).to_pylist()
    derived = None
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if v is None or v == "":  # a NULL id: the position's id instead, never an empty one
            derived = derive_ids(ra, dec_) if derived is None else derived
            v = derived[i]
        out[i] = v
    return out


def _cheap_reasons(batch: pa.RecordBatch, ra: np.ndarray, dec_: np.ndarray) -> np.ndarray:
    """Reason per row (index into UNLABELLED_REASONS) for checks before decoding, -1: pass."""
    reason = np.full(batch.num_rows, -1, dtype=np.int16)
    checks = []
    if "cutout_ok" in batch.schema.names:
        checks.append(("cutout_not_ok", ~(column_f64(batch, "cutout_ok") == 1)))
    if "bandset" in batch.schema.names:
        is_r = pc.fill_null(pc.equal(batch.column("bandset"), "r"), False)
        checks.append(("missing_band", is_r.to_numpy(zero_copy_only=False)))
    checks.append(("bad_position", ~(np.isfinite(ra) & np.isfinite(dec_))))
    for name, hit in checks:
        reason[(reason < 0) & hit] = UNLABELLED_REASONS.index(name)
    return reason


def prepare_unlabelled(
    batch: pa.RecordBatch, meta_cols: Sequence[str], norm_method: str, *, id_column: str = "auto"
) -> Prepared:
    """Check, decode and normalise one record batch of unlabelled cutouts.

    Args:
        batch: rows with at least ``stamp_npz``, ``ra``, ``dec`` and ``meta_cols``.
        meta_cols: raw meta columns in the model's order.
        norm_method: the checkpoint's stamp normalisation.
        id_column: ``auto`` (``ID_COLUMNS``, else derived from ra/dec) or a column name.

    Returns:
        The kept rows (float16 stamps, float32 meta) and every row's id, ra, dec and reason.
    """
    ra, dec_ = column_f64(batch, "ra"), column_f64(batch, "dec")
    reason = _cheap_reasons(batch, ra, dec_)
    cand = np.flatnonzero(reason < 0)
    stamps, codes = dec.decode_stamps(batch.column("stamp_npz").take(pa.array(cand)).to_pylist())
    for code, name in _DECODE_REASON.items():
        reason[cand[codes == code]] = UNLABELLED_REASONS.index(name)
    finite = np.isfinite(stamps).all(axis=(1, 2, 3))
    reason[cand[(codes == dec.DECODE_OK) & ~finite]] = UNLABELLED_REASONS.index("non_finite")
    meta = (
        np.stack([column_f64(batch, c) for c in meta_cols], axis=1)
        if meta_cols
        else np.zeros((batch.num_rows, 0))
    ).astype(np.float32)
    bad_meta = ~np.isfinite(meta).all(axis=1)
    reason[(reason < 0) & bad_meta] = UNLABELLED_REASONS.index("bad_meta")
    keep_local = reason[cand] < 0
    rows = cand[keep_local]
    images = normalize(stamps[keep_local], norm_method).astype(np.float16)  # as in shards
    reasons = {int(i): UNLABELLED_REASONS[reason[i]] for i in np.flatnonzero(reason >= 0)}
    return Prepared(
        rows=rows.astype(np.int64),
        images=images,
        meta=meta[rows],
        ids=_ids(batch, ra, dec_, id_column),
        ra=ra,
        dec=dec_,
        reasons=reasons,
    )


def _table(prep: Prepared, meta_cols: Sequence[str]):
    rows = prep.rows
    table = np.zeros(len(rows), dtype=TABLE_DTYPE)
    for name in TABLE_DTYPE.names:
        if TABLE_DTYPE[name].kind == "f":
            table[name] = np.nan
    table["label"] = UNKNOWN_LABEL
    table["ra"], table["dec"] = prep.ra[rows], prep.dec[rows]
    for name in ("psfsize_r", "psfdepth_r"):
        if name in meta_cols:
            table[name] = prep.meta[:, list(meta_cols).index(name)]
    table["task_id"] = [str(v).encode("utf-8") for v in prep.ids[rows]]
    return table


def _prepared_batches(files: Sequence[Path], meta_cols, norm_method, id_column, batch_rows: int):
    width = 64  # TABLE_DTYPE task_id bytes
    for path in files:
        columns = read_columns(path, meta_cols, id_column)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            prep = prepare_unlabelled(batch, meta_cols, norm_method, id_column=id_column)
            too_long = [i for i in prep.rows.tolist() if len(str(prep.ids[i]).encode()) > width]
            if too_long:
                prep.reasons.update(dict.fromkeys(too_long, "id_too_long"))
                keep = ~np.isin(prep.rows, too_long)
                prep.rows, prep.images, prep.meta = (
                    prep.rows[keep],
                    prep.images[keep],
                    prep.meta[keep],
                )
            yield prep


def _convert_batches(
    files: Sequence[Path],
    split_dir: Path,
    meta_cols: Sequence[str],
    norm_method: str,
    id_column: str,
    batch_rows: int,
    shard_samples: int,
    record_samples: int,
) -> tuple[list, dict[str, list], Counter, list[np.ndarray]]:
    """Write the shards in input order; ``(shards, rejects, counts, kept rows' meta)``."""
    shards, rejects, counts = [], {"id": [], "reason": []}, Counter()
    buf: list[tuple] = []
    kept_meta = [np.zeros((0, len(meta_cols)), np.float32)]

    def flush(final: bool) -> None:
        while buf and (final or sum(len(b[2]) for b in buf) >= shard_samples):
            image = np.concatenate([b[0] for b in buf])
            meta, table = np.concatenate([b[1] for b in buf]), np.concatenate([b[2] for b in buf])
            n = min(shard_samples, len(table))
            path = split_dir / f"shard-{len(shards):06d}.tar"
            shards.append(write_shard(path, image[:n], meta[:n], table[:n], record_samples))
            buf[:] = [(image[n:], meta[n:], table[n:])] if n < len(table) else []

    for prep in _prepared_batches(files, meta_cols, norm_method, id_column, batch_rows):
        counts["input_rows"] += len(prep.ids)
        for row, why in sorted(prep.reasons.items()):
            rejects["id"].append(str(prep.ids[row]))
            rejects["reason"].append(why)
        buf.append((prep.images, prep.meta, _table(prep, meta_cols)))
        kept_meta.append(prep.meta)
        flush(final=False)
    flush(final=True)
    return shards, rejects, counts, kept_meta


def _write_rejects(path: Path, rejects: dict[str, list]) -> None:
    """``rejects.parquet``: the id and reason of every row not converted."""
    with atomic_path(path) as tmp:
        pq.write_table(
            pa.table(
                {
                    "id": pa.array(rejects["id"], pa.string()),
                    "reason": pa.array(rejects["reason"], pa.string()),
                }
            ),
            tmp,
        )


def _manifest_doc(
    files: Sequence[Path],
    data: str | Path,
    shards: list,
    counts: Counter,
    rejects: dict[str, list],
    *,
    meta: dict[str, Any],
    norm_method: str,
    shard_samples: int,
    record_samples: int,
    command: Sequence[str],
) -> dict[str, Any]:
    """The search split's manifest document, ``"unlabelled": true`` last."""
    doc = build_manifest(
        split=SEARCH_SPLIT,
        shards=[s.to_json() for s in shards],
        counts={**counts, "unlabelled": sum(s.num_samples for s in shards)},
        rejected=dict(sorted(Counter(rejects["reason"]).items())),
        norm=norm_settings(norm_method),
        meta=meta,
        preprocess={
            "stamp_px": 64,
            "bands": "grz",
            "image_dtype": "float16",
            "shard_samples": shard_samples,
        },
        record_samples=record_samples,
        command=list(command),
        sources={"data_root": str(data), "files": [str(p) for p in files]},
    )
    doc["unlabelled"] = True
    return doc


def write_unlabelled_shards(
    data: str | Path,
    out: Path,
    *,
    meta_cols: Sequence[str],
    norm_method: str,
    shard_samples: int = 4096,
    record_samples: int = 256,
    batch_rows: int = 1024,
    id_column: str = "auto",
    command: Sequence[str] = (),
) -> Path:
    """Convert unlabelled parquet into one shard split ``<out>/search/`` in input order.

    Every shard holds ``shard_samples`` samples (the last fewer); ``rejects.parquet`` (id,
    reason) lists the rows not converted, and ``manifest.json`` (written last) says
    ``"unlabelled": true``. Meta statistics are those of the converted rows (search scores
    with the checkpoint's own).

    Returns:
        The manifest path.

    Raises:
        ContractError: unreadable input or a missing column.
    """
    files = list_parquet(data)
    split_dir = Path(out) / SEARCH_SPLIT
    split_dir.mkdir(parents=True, exist_ok=True)
    shards, rejects, counts, kept_meta = _convert_batches(
        files,
        split_dir,
        meta_cols,
        norm_method,
        id_column,
        batch_rows,
        shard_samples,
        record_samples,
    )
    mean, std = finish_stats(meta_stats(np.concatenate(kept_meta)))
    _write_rejects(split_dir / "rejects.parquet", rejects)
    doc = _manifest_doc(
        files,
        data,
        shards,
        counts,
        rejects,
        meta={"columns": list(meta_cols), "mean": mean, "std": std, "stats_split": SEARCH_SPLIT},
        norm_method=norm_method,
        shard_samples=shard_samples,
        record_samples=record_samples,
        command=command,
    )
    log.info(
        "%s: %d unlabelled samples in %d shard(s), %d rejected",
        split_dir,
        doc["num_samples"],
        len(shards),
        len(rejects["id"]),
    )
    return write_manifest(split_dir, doc)


def check_labelled(root: str | Path) -> None:
    """Refuse a shard root (or split folder) of unlabelled shards where labels are needed.

    Raises:
        ConfigError: ``root``, ``root/search`` or ``root/train`` holds an unlabelled manifest.
    """
    root = Path(root)
    for folder in (root, root / SEARCH_SPLIT, root / "train"):
        try:
            doc = json.loads((folder / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("unlabelled"):
            raise ConfigError(
                f"{folder / MANIFEST_NAME}: these shards are unlabelled (made by "
                "`haloscope shards --unlabelled` for `haloscope search`); training "
                "needs labelled shards from `haloscope shards --data DATA`"
            )
