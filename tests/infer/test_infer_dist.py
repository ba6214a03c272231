"""torchrun with 2 gloo CPU processes writes exactly the table of one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.infer.infer_fixtures import assert_tables_identical, make_checkpoint, make_dataset


def _infer(*args: str, nproc: int) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={nproc}", "-m", "haloscope"]
                if nproc > 1 else [sys.executable, "-m", "haloscope"])  # fmt: skip
    # NOTE: one intra-op thread in both runs: oneDNN convolutions sum in a thread-count
    # dependent order, which would change the last bit of a logit, not the sharding.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, "infer", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.dist
def test_two_gloo_ranks_give_the_same_scores_table_as_one(tmp_path):
    make_dataset(tmp_path / "data", num_rows=60)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    common = ["--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--split", "val",
              "--device", "cpu", "--no-progress"]  # fmt: skip
    # --batch-size is global: the same 8 rows per model call on each rank in both runs
    one = _infer(*common, "--batch-size", "8", "--out", str(tmp_path / "one.parquet"), nproc=1)
    assert one.returncode == 0, one.stderr
    two = _infer(*common, "--batch-size", "16", "--out", str(tmp_path / "two.parquet"), nproc=2)
    assert two.returncode == 0, two.stderr
    a, b = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "two.parquet")
    assert a.num_rows == 58
    assert_tables_identical(a, b)  # every column, every row, bit for bit
    assert b.schema.metadata[b"world_size"] == b"2"
    assert a.schema.metadata[b"rejected"] == b.schema.metadata[b"rejected"]
