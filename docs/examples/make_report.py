"""Render the example evaluation report in docs/examples/report/ from synthetic data.

    .venv/bin/python docs/examples/make_report.py

800 synthetic scored rows (40% lenses) and their stamps: a red elliptical galaxy in every
stamp, a blue arc at theta_E around the lenses, a faint ring or spiral arm around some
controls, noise of one robust sigma, in the normalised units of the shards. The scores
come from a made-up model that finds large, bright arcs more easily. Nothing here is a
measurement; the page only shows what `haloscope eval --report-dir` writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

OUT = Path(__file__).resolve().parent / "report"
PIXEL_ARCSEC = 0.262
NUM_ROWS = 800


def _stamp(rng: np.random.Generator, theta_px: float | None, kind: str | None) -> np.ndarray:
    yy, xx = np.mgrid[:64, :64] - 31.5
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    galaxy = np.exp(-0.5 * ((u / 3.2) ** 2 + (v / 2.2) ** 2))
    img = np.stack([2.0 * galaxy, 5.0 * galaxy, 8.0 * galaxy])  # g, r, z: a red galaxy
    r, phi = np.hypot(xx, yy), np.arctan2(yy, xx)
    if theta_px is not None:  # a blue arc of ~140 degrees at the Einstein radius
        centre = rng.uniform(-np.pi, np.pi)
        along = np.exp(-0.5 * (np.angle(np.exp(1j * (phi - centre))) / 0.9) ** 2)
        arc = np.exp(-0.5 * ((r - theta_px) / 1.0) ** 2) * along * rng.uniform(1.5, 4)
        img += np.stack([1.0 * arc, 0.8 * arc, 0.5 * arc])
    elif kind == "ring":
        img += np.exp(-0.5 * ((r - 9) / 1.5) ** 2) * np.array([0.3, 0.8, 1.2])[:, None, None]
    elif kind == "spiral":
        arm = np.exp(-0.5 * ((r - 4 - 2.0 * np.mod(phi, 2 * np.pi)) / 1.2) ** 2)
        img += arm * np.array([1.2, 1.0, 0.6])[:, None, None]
    return np.clip(img + rng.normal(size=img.shape), -10, 10).astype(np.float16)


def _table(rng: np.random.Generator) -> tuple[pa.Table, np.ndarray]:
    label = (rng.random(NUM_ROWS) < 0.4).astype(np.int8)
    theta = np.where(label == 1, rng.uniform(0.5, 2.5, NUM_ROWS), np.nan)
    psf = rng.uniform(0.9, 1.8, NUM_ROWS)
    arc_snr = np.where(label == 1, rng.lognormal(1.5, 1.0, NUM_ROWS), np.nan)
    kinds = np.array(["plain", "ring", "spiral"])[rng.integers(0, 3, NUM_ROWS)]
    kind = np.where(label == 1, None, kinds)
    hard = (kind == "ring") * 1.2 + (kind == "spiral") * 0.8
    logit = (rng.normal(-2.5, 1.5, NUM_ROWS) + hard + label
             * (2.0 + 1.5 * np.nan_to_num(theta / psf) + 0.3 * np.log1p(np.nan_to_num(arc_snr))))  # fmt: skip
    logit = logit.astype(np.float32)
    stamps = np.stack([_stamp(rng, t / PIXEL_ARCSEC if y else None, k)
                       for y, t, k in zip(label, theta, kind, strict=True)])  # fmt: skip
    table = pa.table({
        "task_id": [f"mock-{i:05d}" for i in range(NUM_ROWS)],
        "ra": rng.uniform(150, 250, NUM_ROWS), "dec": rng.uniform(-5, 30, NUM_ROWS),
        "split": ["test"] * NUM_ROWS, "label": pa.array(label, pa.int8()),
        "theta_e_arcsec": theta, "psf_fwhm_r": psf, "theta_over_psf": theta / psf,
        "psfsize_r": psf, "psfdepth_r": rng.uniform(23.5, 25, NUM_ROWS), "arc_snr": arc_snr,
        "src_dmag": np.where(label == 1, rng.uniform(0.5, 3, NUM_ROWS), np.nan),
        "control_kind": pa.array(kind.tolist(), pa.string()),
        "logit": logit, "score": (1 / (1 + np.exp(-logit))).astype(np.float32),
        "model": ["example"] * NUM_ROWS,
    })  # fmt: skip
    return table, stamps


def main() -> int:
    rng = np.random.default_rng(2024)
    table, stamps = _table(rng)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pq.write_table(table, work / "scores_test.parquet")
        group = zarr.open_group(str(work / "stamps.zarr"), mode="w")
        group.create_array("stamps", data=stamps, chunks=(256, 3, 64, 64))
        ids = group.create_array("task_id", shape=(NUM_ROWS,), dtype=str)
        ids[:] = np.asarray(table["task_id"].to_pylist())
        # relative paths, so the page names no folder of this machine
        cmd = [str(Path(sys.executable).with_name("haloscope")), "eval", "--scores",
               "scores_test.parquet", "--stamps", "stamps.zarr", "--out-csv",
               "report/stratified_fpr.csv", "--report-dir", "report"]  # fmt: skip
        subprocess.run(cmd, cwd=work, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(work / "report", OUT)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
