"""Benchmark of ``haloscope simulate``: rows/s on one core and peak memory at two survey sizes.

Each size runs in a fresh subprocess with ``--workers 1`` (so the figure is per core, npz
encoding and zstd parquet writing included); the child reports its wall time, CPU time (user plus
system, the latter mostly page faults of fresh memory) and peak RSS (``resource.getrusage``). The
headline ``rows_per_s_per_core`` is the lower of the two sizes' rows per CPU second: on a shared
machine the wall clock includes time other processes took from this one.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["run_bench", "SIZES"]

logger = logging.getLogger(__name__)
SIZES = (5_000, 40_000)

_CHILD = """
import json, resource, sys, time
from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.run import simulate
rows, out = int(sys.argv[1]), sys.argv[2]
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0, c0 = time.perf_counter(), time.process_time()
simulate(SimConfig(out=out, rows=rows, seed=0, workers=1), progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": rows, "wall_s": wall, "cpu_s": cpu,
                  "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                  "peak_rss_mib": r1.ru_maxrss / 1024}))
"""
_TARGET_ROWS_PER_CPU_S = 1500  # issue 16


def _measure(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mock"
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(rows), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"simulate bench child failed:\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    result["rows_per_s_wall"] = round(rows / result["wall_s"], 1)
    result["rows_per_cpu_s"] = round(rows / result["cpu_s"], 1)
    result["bytes_per_row"] = round(size / rows, 1)
    for key in ("wall_s", "cpu_s", "user_s", "sys_s", "peak_rss_mib"):
        result[key] = round(result[key], 2)
    return result


def run_bench(out_path: str) -> dict:
    """Run the simulator benchmark and write its JSON to ``out_path``.

    Args:
        out_path: JSON file to write (parent directories are created).

    Returns:
        The benchmark record: per-size rows/s (wall and per CPU second), peak RSS, bytes per row.
    """
    load_before = os.getloadavg()
    runs = []
    for rows in SIZES:
        logger.info("simulate bench: %d rows, --workers 1", rows)
        runs.append(_measure(rows))
    per_core = min(r["rows_per_cpu_s"] for r in runs)
    record = {
        "bench": "simulate",
        "command": (
            "haloscope simulate --out DIR --rows N --workers 1 --seed 0 (zstd, in a subprocess)"
        ),
        "target_rows_per_s_per_core": _TARGET_ROWS_PER_CPU_S,
        "runs": runs,
        "rows_per_s_per_core": per_core,
        "meets_target": per_core >= _TARGET_ROWS_PER_CPU_S,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    print(
        json.dumps(
            run_bench(sys.argv[1] if len(sys.argv) > 1 else "bench/results/simulate.json"), indent=2
        )
    )
