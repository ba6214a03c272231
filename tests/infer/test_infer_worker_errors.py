"""`haloscope infer` with a parquet file its decoding worker cannot read: one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.infer.infer_fixtures import make_checkpoint, make_dataset

REPO = Path(__file__).resolve().parents[2]


def test_unreadable_row_group_in_a_worker_is_one_line(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", num_rows=48)
    ckpt = make_checkpoint(tmp_path / "gen3" / "best.pt")
    bad = tmp_path / "data" / "region_split=test" / "part-00001.parquet"
    size = bad.stat().st_size
    data = bytearray(bad.read_bytes())
    data[8 : size // 2] = bytes(size // 2 - 8)  # row-group pages gone, the footer kept
    bad.write_bytes(bytes(data))
    out = tmp_path / "scores.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "infer", "--ckpt", str(ckpt), "--data",
         str(tmp_path / "data"), "--split", "test", "--out", str(out), "--num-workers", "1",
         "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "worker process" not in proc.stderr, proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if "error" in x.lower()]
    assert line.startswith(f"haloscope infer: error: {bad}: cannot read row group"), line
    assert not out.exists()
