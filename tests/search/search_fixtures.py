"""Builders for the search tests: unlabelled cutouts as parquet, FITS files and shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from astropy.io import fits

from haloscope.preprocess.decode import decode_stamps
from tests.infer.infer_fixtures import make_checkpoint, make_rows
from tests.preprocess.contract_rows import to_table

__all__ = [
    "TRUTH",
    "make_checkpoint",
    "unlabelled_table",
    "write_parquet",
    "write_fits",
    "write_catalog",
    "search",
]

TRUTH = (
    "is_control",
    "theta_e_arcsec",
    "psf_fwhm_used_r",
    "arc_snr",
    "src_dmag",
    "src_reff_arcsec",
)
"""The labelled mock's truth columns, dropped to make an unlabelled table."""


def unlabelled_table(
    num_rows: int, seed: int = 0, *, all_ok: bool = True
) -> tuple[pa.Table, np.ndarray]:
    """The labelled mock rows minus truth columns, and their raw stamps (N, 3, 64, 64).

    ``all_ok=False`` keeps ``make_rows``' cutout_ok = 0 in row 4."""
    rows = make_rows(num_rows, seed)
    if all_ok:
        rows[4]["cutout_ok"] = 1
    table = to_table(rows).drop_columns(list(TRUTH))

    stamps, _ = decode_stamps(table.column("stamp_npz").to_pylist())
    return table, stamps


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def write_fits(stamps: np.ndarray, ids: list[str], folder: Path) -> Path:
    """One Legacy-Survey-like cutout per stamp: (3, 64, 64) float32, BAND0..2 = g, r, z."""
    folder.mkdir(parents=True, exist_ok=True)
    for stamp, ident in zip(stamps, ids, strict=True):
        hdu = fits.PrimaryHDU(np.asarray(stamp, np.float32))
        for i, band in enumerate("grz"):
            hdu.header[f"BAND{i}"] = band
        hdu.writeto(folder / f"{ident}.fits")
    return folder


def write_catalog(table: pa.Table, path: Path, ids: list[str]) -> Path:
    """CSV catalogue keyed by id with ra, dec and the meta columns."""
    cat = pa.table(
        {
            "id": ids,
            "ra": table.column("ra"),
            "dec": table.column("dec"),
            "psfsize_r": table.column("psfsize_r"),
            "psfdepth_r": table.column("psfdepth_r"),
        }
    )
    pcsv.write_csv(cat, path)
    return path


def search(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``haloscope search ARGS`` in a subprocess (torchrun with gloo when nproc > 1)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={nproc}", "-m", "haloscope"]
                if nproc > 1 else [sys.executable, "-m", "haloscope"])  # fmt: skip
    # NOTE: one intra-op thread: oneDNN convolutions sum in a thread-count-dependent order
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, "search", *args, "--device", "cpu", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
