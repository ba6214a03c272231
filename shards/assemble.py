"""The last step of a conversion: per-bucket part records -> manifest.json (+ zarr store).

Each pass-2 bucket leaves a JSON record (its shard's entry, duplicates dropped, meta
statistics). Once every record of a split exists, ``assemble_split`` combines them in bucket
order (so the result does not depend on which task or worker wrote which bucket), writes the
optional random-access zarr store, and writes ``manifest.json`` last.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from haloscope.shards.index import open_shard
from haloscope.shards.manifest import build_manifest, write_manifest
from haloscope.shards.schema import STAMP_PX, TABLE_DTYPE

__all__ = [
    "meta_stats",
    "combine_stats",
    "finish_stats",
    "write_zarr",
    "assemble_split",
    "ZARR_NAME",
    "ZARR_CHUNK",
    "ZARR_ARRAYS",
]

log = logging.getLogger(__name__)
ZARR_NAME = "stamps.zarr"
ZARR_CHUNK = 256
ZARR_ARRAYS: tuple[str, ...] = ("stamps", "meta", *TABLE_DTYPE.names, "shard", "offset")
"""The arrays of ``stamps.zarr``, each with one row per sample."""


def meta_stats(meta: np.ndarray) -> dict[str, Any]:
    """``{count, mean, m2}`` (float64, per column) of an (N, M) array."""
    x = np.asarray(meta, dtype=np.float64)
    if not len(x):
        return {"count": 0, "mean": [0.0] * x.shape[1], "m2": [0.0] * x.shape[1]}
    mean = x.mean(axis=0)
    return {"count": len(x), "mean": mean.tolist(), "m2": ((x - mean) ** 2).sum(axis=0).tolist()}


def combine_stats(parts: list[dict[str, Any]], num_meta: int) -> dict[str, Any]:
    """Chan et al. pairwise combination of ``meta_stats`` dicts, in the given order."""
    n, mean, m2 = 0, np.zeros(num_meta), np.zeros(num_meta)
    for p in parts:
        nb = p["count"]
        if nb == 0:
            continue
        mb, m2b = np.asarray(p["mean"]), np.asarray(p["m2"])
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta**2 * n * nb / tot
        n = tot
    return {"count": n, "mean": mean.tolist(), "m2": m2.tolist()}


def finish_stats(stats: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Mean and population std; a zero or undefined std becomes 1 (no scaling)."""
    n = stats["count"]
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.sqrt(np.asarray(stats["m2"]) / n) if n else np.ones_like(mean)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return mean.tolist(), std.tolist()


def write_zarr(split_dir: Path, shards: list[dict[str, Any]], num_meta: int) -> Path:
    """Write ``stamps.zarr``: every sample in shard order, chunked for random access by row.

    Arrays (``ZARR_ARRAYS``): ``stamps`` (N,3,64,64) float16, ``meta`` (N,M) float32, one
    array per ``TABLE_DTYPE`` field (``task_id``/``brickname`` as strings), ``shard`` and
    ``offset`` (N,) int32 locating each row in the tar shards. Written into a temporary
    sibling folder (``.stamps.zarr.<random>.tmp``, removed on failure) that replaces the
    store when complete.
    """
    final = split_dir / ZARR_NAME
    # NOTE: os.mkdir applies the umask (mkdtemp would make the store 0700)
    tmp = split_dir / f".{ZARR_NAME}.{secrets.token_hex(8)}.tmp"
    tmp.mkdir(parents=True)
    try:
        _fill_zarr(tmp, split_dir, shards, num_meta)
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is moved aside first, then removed."""
    old = final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _fill_zarr(store: Path, split_dir: Path, shards: list[dict[str, Any]], num_meta: int) -> None:
    n = sum(s["num_samples"] for s in shards)
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.attrs.update({"num_samples": n, "order": "shard order (manifest shards, records)"})
    arrays = {
        "stamps": root.create_array(
            "stamps",
            shape=(n, 3, STAMP_PX, STAMP_PX),
            dtype="float16",
            chunks=(ZARR_CHUNK, 3, STAMP_PX, STAMP_PX),
        ),
        "meta": root.create_array(
            "meta",
            shape=(n, num_meta),
            dtype="float32",
            chunks=(max(ZARR_CHUNK, 1), max(num_meta, 1)),
        ),
    }
    for name in TABLE_DTYPE.names:
        kind = TABLE_DTYPE[name].kind
        dtype = str if kind == "S" else TABLE_DTYPE[name].newbyteorder("=")
        arrays[name] = root.create_array(name, shape=(n,), dtype=dtype, chunks=(ZARR_CHUNK * 16,))
    for name in ("shard", "offset"):
        arrays[name] = root.create_array(name, shape=(n,), dtype="int32", chunks=(ZARR_CHUNK * 16,))
    pos = 0
    for s_index, entry in enumerate(shards):
        views = open_shard(split_dir / entry["file"], entry["records"], num_meta)
        image = np.concatenate([v.image for v in views])
        table = np.concatenate([v.table for v in views])
        end = pos + len(table)
        arrays["stamps"][pos:end] = image
        arrays["meta"][pos:end] = np.concatenate([v.meta for v in views])
        for name in TABLE_DTYPE.names:
            col = table[name]
            arrays[name][pos:end] = col.astype(str) if col.dtype.kind == "S" else col
        arrays["shard"][pos:end] = np.full(len(table), s_index, dtype=np.int32)
        arrays["offset"][pos:end] = np.arange(len(table), dtype=np.int32)
        pos = end


def assemble_split(
    split_dir: Path,
    doc: dict[str, Any],
    records: list[dict[str, Any]],
    num_meta: int,
    with_zarr: bool,
) -> Path:
    """Combine bucket records (bucket order) into the split's manifest; write it last.

    A split without samples (no input rows, or every row rejected) is written as a manifest
    with its counts and reject reasons, no shards and no zarr store, and a warning is logged.

    Args:
        split_dir: ``SHARDS/<split>``.
        doc: :func:`haloscope.shards.manifest.build_manifest` arguments known to the caller
            (split, counts, rejected, norm, meta, preprocess, ...); ``shards``, ``zarr`` and
            the sample counts are filled in here.
        records: pass-2 records of every bucket, in bucket order.
        num_meta: meta columns.
        with_zarr: also write ``stamps.zarr``.
    """
    shards = [r["shard"] for r in records if r.get("shard")]
    counts = dict(doc.get("counts", {}))
    counts["lens"] = sum(s["num_by_label"]["1"] for s in shards)
    counts["control"] = sum(s["num_by_label"]["0"] for s in shards)
    counts["hard_neg_samples"] = sum(s["num_hard_neg"] for s in shards)
    counts["hard_neg_rows"] = sum(s["num_hard_neg_rows"] for s in shards)
    counts["duplicates_removed"] = sum(r["duplicates"] for r in records)
    rejected = dict(doc.get("rejected", {}))
    if counts["duplicates_removed"]:
        rejected["duplicate"] = counts["duplicates_removed"]
    zarr_name = None
    if with_zarr and shards:
        write_zarr(split_dir, shards, num_meta)
        zarr_name = ZARR_NAME
    else:
        shutil.rmtree(split_dir / ZARR_NAME, ignore_errors=True)  # of an earlier conversion
    full = build_manifest(
        **{**doc, "counts": counts, "rejected": rejected, "zarr": zarr_name, "shards": shards}
    )
    path = write_manifest(split_dir, full)
    if not shards:
        log.warning(
            "%s: no accepted samples (%d input rows; rejected: %s); wrote an empty split",
            split_dir,
            counts.get("input_rows", 0),
            ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none",
        )
    log.info("%s: %d samples in %d shards", path, full["num_samples"], len(shards))
    return path
