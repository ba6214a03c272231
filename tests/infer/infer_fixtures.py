"""Builders for the infer tests: a tiny contract parquet root and a real haloscope checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from haloscope.preprocess.config import PreprocessConfig
from haloscope.preprocess.normalize import norm_settings
from haloscope.train.checkpoint import save_checkpoint
from haloscope.train.model import build_model
from tests.preprocess.contract_rows import base_row, npz_bytes, to_table

META_COLS = ("psfsize_r", "psfdepth_r")


def _stamp(rng: np.random.Generator, lens: bool) -> np.ndarray:
    """A noisy galaxy-like blob; lenses get a faint ring so the rows differ by class."""
    yy, xx = np.mgrid[:64, :64] - 32.0
    r = np.hypot(yy, xx)
    img = np.exp(-r / 4.0)[None] * rng.uniform(0.5, 2.0, (3, 1, 1))
    if lens:
        img = img + 0.3 * np.exp(-((r - 8.0) ** 2) / 2.0)[None]
    return (img + rng.normal(0, 0.02, (3, 64, 64))).astype(np.float32)


def make_rows(num_rows: int, seed: int = 0, start: int = 0) -> list[dict]:
    """Contract rows: ~1/3 lenses, one unresolved lens and one cutout_ok=0 row included."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + num_rows):
        lens = i % 3 == 0
        row = base_row(i, rng, is_control=0 if lens else 1)
        stamp = _stamp(rng, lens)
        row["stamp_npz"] = npz_bytes(stamp)
        row["psfsize_r"] = float(rng.uniform(0.9, 1.8))
        row["psfdepth_r"] = float(rng.uniform(23.5, 25.0))
        if lens:
            row["theta_e_arcsec"] = float(rng.uniform(0.8, 2.5))
            row["arc_snr"] = float(rng.uniform(1, 30))
        rows.append(row)
    rows[3]["theta_e_arcsec"] = 0.2  # lens (i=3 -> label 1), unresolved at the 0.5 cut
    rows[4]["cutout_ok"] = 0
    return rows


def make_dataset(root: Path, num_rows: int = 48, seed: int = 0, row_group_rows: int = 8) -> Path:
    """A parquet root with the same ``num_rows`` rows in every split, two files per split.

    Small row groups, because ranks and loader workers split a split by row group.
    """
    rows = make_rows(num_rows, seed)
    half = num_rows // 2
    for split in ("train", "val", "test"):
        part = root / f"region_split={split}"
        part.mkdir(parents=True, exist_ok=True)
        for i, chunk in enumerate((rows[:half], rows[half:])):
            pq.write_table(
                to_table(chunk), part / f"part-{i:05d}.parquet", row_group_size=row_group_rows
            )
    return root


def make_checkpoint(
    path: Path,
    *,
    arch: str = "convnext_atto",
    meta_cols: tuple[str, ...] = META_COLS,
    min_theta_over_psf: float = 0.5,
    seed: int = 0,
) -> Path:
    """A ``haloscope train``-format checkpoint of a randomly initialised model."""
    torch.manual_seed(seed)
    args = {
        "arch": arch,
        "meta_cols": list(meta_cols),
        "meta_mean": [1.3, 24.3][: len(meta_cols)],
        "meta_std": [0.25, 0.4][: len(meta_cols)],
        "dropout": 0.1,
        "drop_path_rate": 0.1,
    }
    model = build_model(**args)
    # random init gives near-zero logits; spread the output layer so scores are varied
    with torch.no_grad():
        model.classifier[-1].weight.mul_(20.0)
    preprocess = {
        "min_theta_over_psf": min_theta_over_psf,
        "hard_neg_weight": None,
        "stamp_px": 64,
        "norm": norm_settings(PreprocessConfig().norm_method),  # what `haloscope shards` writes
    }
    return save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_args": args,
            "config": json.dumps({}),
            "preprocess": preprocess,
            "meta": {"cols": list(meta_cols)},
            "progress": {"epoch": 0, "global_step": 0},
        },
    )


def assert_tables_identical(a, b) -> None:
    """Same columns and types and bit-identical values (NaN == NaN), metadata aside."""
    assert a.schema.remove_metadata().equals(b.schema.remove_metadata())
    assert a.num_rows == b.num_rows
    for name in a.schema.names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            xs, ys = x.to_numpy(), y.to_numpy()
            assert xs.tobytes() == ys.tobytes(), f"column {name} differs"
        else:
            assert x.to_pylist() == y.to_pylist(), f"column {name} differs"
