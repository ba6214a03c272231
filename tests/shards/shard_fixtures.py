"""Tiny contract-conformant survey with known bad rows, duplicates and hard negatives.

Used by the converter and reader tests: ``make_survey`` writes the parquet root and a
lookup and returns what a correct conversion must produce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.preprocess.convert.core import ConvertConfig
from haloscope.preprocess.convert.run import convert
from tests.preprocess.contract_rows import SCHEMA, base_row, npz_bytes, to_table

HN_WEIGHT = 3


@dataclass
class Survey:
    """A written survey and the expected outcome of converting it."""

    root: Path
    lookup: Path
    stamps: dict[str, np.ndarray] = field(default_factory=dict)
    """task_id -> raw float32 stamp of every row expected in the shards."""
    meta: dict[str, tuple[float, float]] = field(default_factory=dict)
    """task_id -> (psfsize_r, psfdepth_r)."""
    accepted: dict[str, set[str]] = field(default_factory=dict)
    """split -> task_ids expected in the shards (duplicates removed)."""
    labels: dict[str, int] = field(default_factory=dict)
    """task_id -> label (1 lens, 0 control)."""
    hard_neg: set[str] = field(default_factory=set)
    """task_ids of controls matched by the lookup."""
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> reason -> count."""


def _rows(split: str, n: int, offset: int, rng: np.random.Generator, survey: Survey) -> list[dict]:
    rows = []
    for i in range(n):
        row = base_row(offset + i, rng, is_control=int(i % 3 != 0))
        row["psfsize_r"] = float(rng.uniform(0.9, 1.6))
        row["psfdepth_r"] = float(rng.uniform(23.5, 25.0))
        if row["is_control"] == 0:
            row["psf_fwhm_used_r"] = row["psfsize_r"]
        rows.append(row)
    return rows


def _add_bad_rows(rows: list[dict], rng: np.random.Generator, offset: int) -> dict[str, int]:
    bad = [base_row(offset + k, rng, is_control=1) for k in range(6)]
    bad[0]["stamp_npz"] = b"this is not an npz"
    nan = bad[1]["_stamp"].copy()
    nan[1, 5, 5] = np.nan
    bad[1]["stamp_npz"] = npz_bytes(nan)
    bad[2]["bandset"] = "r"
    bad[3]["cutout_ok"] = 0
    bad[4]["is_control"], bad[4]["theta_e_arcsec"], bad[4]["psf_fwhm_used_r"] = 0, 0.2, 1.2
    bad[5]["stamp_npz"] = npz_bytes(bad[5]["_stamp"], keys=("image_g", "image_r"))
    rows.extend(bad)
    return {
        "undecodable": 1,
        "non_finite": 1,
        "r_only_bandset": 1,
        "cutout_not_ok": 1,
        "unresolved": 1,
        "bad_keys": 1,
    }


def _write_split(root: Path, split: str, rows: list[dict], files: int) -> None:
    part = root / f"region_split={split}"
    part.mkdir(parents=True, exist_ok=True)
    for f, chunk in enumerate(np.array_split(np.arange(len(rows)), files)):
        pq.write_table(
            to_table([rows[i] for i in chunk], SCHEMA),
            part / f"part-{f:05d}.parquet",
            compression="zstd",
        )


def make_survey(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Survey:
    """Write train (2 files, bad rows, 5 duplicates), val and test, plus a lookup parquet."""
    sizes = sizes or {"train": 150, "val": 40, "test": 30}
    rng = np.random.default_rng(seed)
    survey = Survey(root=root / "data", lookup=root / "lookup.parquet")
    lookup_pos: list[tuple[float, float]] = []
    for s_index, (split, n) in enumerate(sizes.items()):
        rows = _rows(split, n, 10_000 * (s_index + 1), rng, survey)
        survey.accepted[split] = {r["task_id"] for r in rows}
        for r in rows:
            survey.stamps[r["task_id"]] = r["_stamp"]
            survey.meta[r["task_id"]] = (r["psfsize_r"], r["psfdepth_r"])
            survey.labels[r["task_id"]] = 1 - r["is_control"]
        controls = [r for r in rows if r["is_control"] == 1]
        for r in controls[: 4 if split == "train" else 2]:
            survey.hard_neg.add(r["task_id"])
            lookup_pos.append((round(r["ra"], 6), round(r["dec"], 6)))
        rejected = {}
        if split == "train":
            lens = next(r for r in rows if r["is_control"] == 0)
            lookup_pos.append((round(lens["ra"], 6), round(lens["dec"], 6)))  # ignored: a lens
            for k in range(5):  # pixel-identical copies of the first rows, later in input order
                dup = dict(rows[k], task_id=f"dup{k:061d}")
                rows.append(dup)
            rejected = _add_bad_rows(rows, rng, 90_000)
            rejected["duplicate"] = 5
        survey.rejected[split] = rejected
        _write_split(survey.root, split, rows, 2 if split == "train" else 1)
    ra, dec = zip(*lookup_pos, strict=False)
    pq.write_table(
        pa.table({"ra_key": list(ra), "dec_key": list(dec), "max_score": [0.95] * len(ra)}),
        survey.lookup,
    )
    return survey


def run_convert(data: Path, out: Path, **kw) -> dict:
    """Convert with small shards/records so boundaries are exercised."""
    settings = {"shard_samples": 64, "record_samples": 16, "splits": ("train", "val", "test")}
    settings.update(kw)
    cfg = ConvertConfig(data=data, out=out, **settings)
    return convert(cfg)
