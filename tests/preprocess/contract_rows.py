"""Builders of tiny contract-conformant parquet tables for the preprocess tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def npz_bytes(
    stamp: np.ndarray | None = None, keys=("image_g", "image_r", "image_z"), compressed: bool = True
) -> bytes:
    """np.savez(_compressed) bytes of a (3, 64, 64) stamp under ``keys``."""
    if stamp is None:
        stamp = np.zeros((3, 64, 64), np.float32)
    arrays = {k: stamp[i % len(stamp)] for i, k in enumerate(keys)}
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def base_row(i: int, rng: np.random.Generator, *, is_control: int = 1) -> dict:
    stamp = rng.normal(0.0, 0.01, (3, 64, 64)).astype(np.float32)
    lens = is_control == 0
    return {
        "task_id": f"{i:064x}",
        "ra": 150.0 + i * 1e-3,
        "dec": 2.0 + i * 1e-3,
        "brickname": "1500p020",
        "is_control": is_control,
        "cutout_ok": 1,
        "bandset": "grz",
        "theta_e_arcsec": 1.5 if lens else 0.0,
        "psf_fwhm_used_r": 1.2 if lens else None,
        "psfsize_r": 1.3,
        "psfdepth_r": 24.5,
        "arc_snr": 12.0 if lens else None,
        "src_dmag": 1.0 if lens else 0.0,
        "src_reff_arcsec": 0.2 if lens else 0.0,
        "stamp_npz": npz_bytes(stamp),
        "_stamp": stamp,
    }


SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("ra", pa.float64()),
        ("dec", pa.float64()),
        ("brickname", pa.string()),
        ("is_control", pa.int32()),
        ("cutout_ok", pa.int32()),
        ("bandset", pa.string()),
        ("theta_e_arcsec", pa.float64()),
        ("psf_fwhm_used_r", pa.float64()),
        ("psfsize_r", pa.float64()),
        ("psfdepth_r", pa.float64()),
        ("arc_snr", pa.float64()),
        ("src_dmag", pa.float64()),
        ("src_reff_arcsec", pa.float64()),
        ("stamp_npz", pa.binary()),
    ]
)


def to_table(rows: list[dict], schema: pa.Schema = SCHEMA) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(cols, schema=schema)


def write_dataset(
    root: Path, rows_per_split: dict[str, list[dict]], schema: pa.Schema = SCHEMA
) -> Path:
    for split, rows in rows_per_split.items():
        part = root / f"region_split={split}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(rows, schema), part / "part-00000.parquet")
    return root
