"""Two torchruns as two "nodes" of one gloo CPU rank each write exactly one process's search.

Each node is its own ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank N`` with the same
command line and a static rendezvous on 127.0.0.1, as on a cluster with one torchrun per node
and --out on a shared file system. With one rank per node, LOCAL_RANK is 0 on both nodes while
RANK is 0 and 1: the chunk split and the part names must follow the global rank.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.infer.infer_fixtures import assert_tables_identical
from tests.search.search_fixtures import (
    make_checkpoint,
    search,
    search_nodes,
    unlabelled_table,
    write_parquet,
)


def _inputs(tmp_path, rows: int) -> list[str]:
    table, _ = unlabelled_table(rows)
    data = write_parquet(table, tmp_path / "in" / "cutouts.parquet", row_group_rows=4)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    return ["--input", str(data), "--ckpt", str(ckpt), "--num-workers", "1"]


def _run_nodes(*args: str) -> None:
    results = search_nodes(*args, nnodes=2, timeout=150)  # a hung rendezvous fails, not hangs
    for node, res in enumerate(results):
        assert res.returncode == 0, f"node {node} (rc {res.returncode}):\n{res.stderr}"


def _parts(out) -> dict[str, tuple[int, int, int]]:
    """part name -> (inode, size, mtime_ns)."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted((out / "parts").iterdir())
    }


@pytest.mark.dist
def test_two_nodes_equal_one_process(tmp_path):
    common = _inputs(tmp_path, 30)  # 8 chunks of <= 4 rows
    # --batch-size is global: the same 4 rows per model call on each rank in both runs
    one = search(*common, "--batch-size", "4", "--out", str(tmp_path / "one"), nproc=1)
    assert one.returncode == 0, one.stderr
    _run_nodes(*common, "--batch-size", "8", "--out", str(tmp_path / "two"))
    a = pq.read_table(tmp_path / "one" / "candidates.parquet")
    b = pq.read_table(tmp_path / "two" / "candidates.parquet")
    assert a.num_rows == 30
    assert_tables_identical(a, b)
    # part-<rank>-<chunk>: chunk k by global rank k % 2 (LOCAL_RANK would give rank 0 twice)
    parts = [name.removesuffix(".parquet").split("-")[1:] for name in _parts(tmp_path / "two")]
    assert sorted(int(chunk) for _, chunk in parts) == list(range(8))
    assert all(int(chunk) % 2 == int(rank) for rank, chunk in parts)
    assert {rank for rank, _ in parts} == {"00000", "00001"}
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rows"] == 30


@pytest.mark.dist
def test_two_nodes_rerun_writes_nothing_twice(tmp_path):
    common = [*_inputs(tmp_path, 12), "--batch-size", "8", "--out", str(tmp_path / "s")]
    _run_nodes(*common)  # 3 chunks: 0 and 2 on rank 0, 1 on rank 1
    before = _parts(tmp_path / "s")
    first = pq.read_table(tmp_path / "s" / "candidates.parquet")
    _run_nodes(*common)  # finished: every chunk has a part, on whichever node
    assert _parts(tmp_path / "s") == before  # no part rewritten, none added
    assert sorted(before) == [
        "part-00000-0000000.parquet",
        "part-00000-0000002.parquet",
        "part-00001-0000001.parquet",
    ]
    assert_tables_identical(first, pq.read_table(tmp_path / "s" / "candidates.parquet"))
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rows"] == 12
    assert summary["chunks_resumed"] == 3 and summary["rows_this_run"] == 0
