"""``haloscope infer --shards URL`` (a real subprocess, HTTP on 127.0.0.1, with and without a
cache) writes the scores table of the same run on the local folder, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.infer.infer_fixtures import assert_tables_identical, make_checkpoint, make_dataset
from tests.shards.remote_servers import FAST_RETRIES, http_server


def _haloscope(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **FAST_RETRIES},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_infer_over_http_equals_local(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", num_rows=45)
    ckpt = tmp_path / "gen3" / "best.pt"
    make_checkpoint(ckpt)
    _haloscope("shards", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "shards"),
               "--record-samples", "16", "--shard-samples", "32", "--no-progress")  # fmt: skip
    common = ("infer", "--ckpt", str(ckpt), "--split", "test", "--batch-size", "8", "--no-progress")
    _haloscope(*common, "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "a.parquet"))
    with http_server(tmp_path / "shards") as (url, faults):
        _haloscope(
            *common, "--shards", url, "--num-workers", "2", "--out", str(tmp_path / "b.parquet")
        )
        _haloscope(*common, "--shards", url, "--cache-dir", str(tmp_path / "cache"),
                   "--out", str(tmp_path / "c.parquet"))  # fmt: skip
    local = pq.read_table(tmp_path / "a.parquet")
    assert local.num_rows > 0
    assert_tables_identical(local, pq.read_table(tmp_path / "b.parquet"))
    assert_tables_identical(local, pq.read_table(tmp_path / "c.parquet"))
    assert any(r[2] for r in faults.requests if r[1].endswith(".tar"))  # range requests
    assert list((tmp_path / "cache").glob("??/*.tar"))
