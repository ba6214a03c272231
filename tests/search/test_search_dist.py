"""torchrun with 2 gloo CPU ranks writes exactly the candidates of one process."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.infer.infer_fixtures import assert_tables_identical
from tests.search.search_fixtures import make_checkpoint, search, unlabelled_table, write_parquet


@pytest.mark.dist
def test_two_gloo_ranks_equal_one(tmp_path):
    table, _ = unlabelled_table(30)
    data = write_parquet(table, tmp_path / "in" / "cutouts.parquet", row_group_rows=4)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    common = ["--input", str(data), "--ckpt", str(ckpt), "--num-workers", "1"]
    # --batch-size is global: the same 4 rows per model call on each rank in both runs
    one = search(*common, "--batch-size", "4", "--out", str(tmp_path / "one"), nproc=1)
    assert one.returncode == 0, one.stderr
    two = search(*common, "--batch-size", "8", "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    a = pq.read_table(tmp_path / "one" / "candidates.parquet")
    b = pq.read_table(tmp_path / "two" / "candidates.parquet")
    assert a.num_rows == 30
    assert_tables_identical(a, b)
    ranks = {p.name.split("-")[1] for p in (tmp_path / "two" / "parts").glob("part-*")}
    assert ranks == {"00000", "00001"}  # both ranks scored a disjoint part
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rows"] == 30


@pytest.mark.dist
def test_a_refusal_on_rank_0_stops_every_rank(tmp_path):
    table, _ = unlabelled_table(8)
    data = write_parquet(table, tmp_path / "in" / "cutouts.parquet", row_group_rows=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("not a search")  # rank 0 refuses this --out
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    res = search("--input", str(data), "--ckpt", str(ckpt), "--out", str(out), "--batch-size",
                 "8", nproc=2, timeout=240)  # fmt: skip
    assert res.returncode != 0
    assert res.stderr.count("is not a search folder") >= 2  # both ranks said it, none hung
    assert not (out / "parts").exists()
