"""Converter benchmark (``haloscope bench convert``): rows/s per core and peak memory.

Writes a contract-conformant parquet survey (unique random stamps as ``np.savez_compressed``
blobs, zstd parquet) at two sizes, runs ``haloscope shards --workers 1`` on each in a
subprocess, and reads the child's CPU time and peak RSS from ``os.wait4``. With
``--shard-samples`` fixed, memory is bounded by the bucket size, so the peak RSS must not
grow with the input. Results go to ``bench/results/convert.json``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.argparse_util import VerbParser

__all__ = ["run_bench", "main", "write_survey"]

SHARD_SAMPLES = 2048


def _npz(stamp: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, image_g=stamp[0], image_r=stamp[1], image_z=stamp[2])
    return buf.getvalue()


def write_survey(
    root: Path, rows_per_split: dict[str, int], seed: int = 0, rows_per_file: int = 2000
) -> None:
    """Write a hive-partitioned survey with unique stamps (a third of the rows lenses)."""
    rng = np.random.default_rng(seed)
    next_id = 0
    for split, n in rows_per_split.items():
        part = root / f"region_split={split}"
        part.mkdir(parents=True, exist_ok=True)
        for f, start in enumerate(range(0, n, rows_per_file)):
            m = min(rows_per_file, n - start)
            ids = np.arange(next_id, next_id + m)
            next_id += m
            lens = ids % 3 == 0
            size = rng.uniform(0.9, 1.6, m)
            cols = {
                "task_id": [f"{i:016x}" for i in ids],
                "ra": 150 + ids * 1e-4,
                "dec": 2 + ids * 1e-4,
                "brickname": ["1500p020"] * m,
                "is_control": (~lens).astype(np.int32),
                "cutout_ok": np.ones(m, np.int32),
                "theta_e_arcsec": np.where(lens, 1.5, 0.0),
                "psf_fwhm_used_r": np.where(lens, size, np.nan),
                "psfsize_r": size,
                "psfdepth_r": rng.uniform(23.5, 25, m),
                "arc_snr": np.where(lens, 10.0, np.nan),
                "src_dmag": np.where(lens, 1.0, np.nan),
                "src_reff_arcsec": np.where(lens, 0.2, np.nan),
                "stamp_npz": [
                    _npz(rng.normal(0, 0.01, (3, 64, 64)).astype(np.float32)) for _ in range(m)
                ],
            }
            pq.write_table(pa.table(cols), part / f"part-{f:05d}.parquet", compression="zstd")


def _convert(data: Path, out: Path) -> dict[str, float]:
    exe = Path(sys.executable).parent / "haloscope"
    cmd = [
        str(exe),
        "shards",
        "--data",
        str(data),
        "--out",
        str(out),
        "--workers",
        "1",
        "--shard-samples",
        str(SHARD_SAMPLES),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"converter failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }  # Linux reports KiB


def run_bench(out_path: str, sizes: tuple[int, ...] = (4000, 16000)) -> dict[str, Any]:
    """Convert two survey sizes (train rows; val/test 10% each) and record the figures.

    Args:
        out_path: JSON destination (e.g. ``bench/results/convert.json``).
        sizes: train rows of the two runs.

    Returns:
        The result dict (also written to ``out_path``).
    """
    runs = []
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="haloscope-bench-convert-") as tmp:
        for n in sizes:
            data = Path(tmp) / f"data{n}"
            splits = {"train": n, "val": n // 10, "test": n // 10}
            write_survey(data, splits)
            fig = _convert(data, Path(tmp) / f"shards{n}")
            rows = sum(splits.values())
            runs.append(
                {
                    "input_rows": rows,
                    "rows_per_s_wall": round(rows / fig["wall_s"], 1),
                    "rows_per_cpu_s": round(rows / fig["cpu_s"], 1),
                    "wall_s": round(fig["wall_s"], 2),
                    "cpu_s": round(fig["cpu_s"], 2),
                    "peak_rss_mib": round(fig["peak_rss_mib"], 1),
                }
            )
    result = {
        "benchmark": "convert",
        "command": "haloscope shards --workers 1 "
        f"--shard-samples {SHARD_SAMPLES} (one process = one core)",
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "runs": runs,
        "peak_rss_ratio_large_over_small": round(
            runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3
        ),
        "input_ratio_large_over_small": round(runs[-1]["input_rows"] / runs[0]["input_rows"], 3),
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str]) -> int:
    """``haloscope bench convert [--out PATH]``."""
    parser = VerbParser("bench convert", "Converter rows/s per core and peak memory at two sizes.")
    parser.add_argument("--out", default="bench/results/convert.json", help="JSON output path")
    parser.add_argument("--sizes", default="4000,16000", help="train rows of the two runs")
    args = parser.parse_args(argv)
    result = run_bench(args.out, tuple(int(s) for s in args.sizes.split(",")))
    print(json.dumps(result["runs"], indent=1))
    return 0
