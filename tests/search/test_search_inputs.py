"""Parquet, FITS and unlabelled-shard inputs give identical scores for the same cutouts, and
parquet search scores equal `haloscope infer`'s for the same rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from haloscope.cli import main as haloscope
from tests.infer.infer_fixtures import make_dataset
from tests.search.search_fixtures import (
    TRUTH,
    make_checkpoint,
    search_here,
    unlabelled_table,
    write_catalog,
    write_fits,
    write_parquet,
)


def _search(*args: str) -> int:
    return search_here(*args)


def _logits(out) -> dict[str, float]:
    t = pq.read_table(out / "candidates.parquet")
    return dict(zip(t.column("id").to_pylist(), t.column("logit").to_pylist(), strict=True))


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory):
    """24 unlabelled rows (the labelled mock minus truth), as parquet, FITS and shards, each
    cut into chunks of 8 rows, so the three sources make the same model calls."""
    tmp = tmp_path_factory.mktemp("inputs")
    table, stamps = unlabelled_table(24)
    assert not set(TRUTH) & set(table.schema.names)
    parquet = write_parquet(table, tmp / "parquet" / "cutouts.parquet")
    ids = table.column("task_id").to_pylist()
    fits_dir = write_fits(stamps, ids, tmp / "fits")
    catalog = write_catalog(table, tmp / "catalog.csv", ids)
    assert haloscope(["shards", "--unlabelled", "--data", str(parquet), "--out",
                      str(tmp / "shards"), "--shard-samples", "8", "--record-samples", "4",
                      "--no-progress"]) == 0  # fmt: skip
    ckpt = make_checkpoint(tmp / "run" / "best.pt")
    return {
        "tmp": tmp,
        "parquet": parquet,
        "fits": fits_dir,
        "catalog": catalog,
        "shards": tmp / "shards",
        "ckpt": ckpt,
        "ids": ids,
    }


def test_parquet_fits_and_shards_give_identical_scores(cutouts):
    c, tmp = cutouts, cutouts["tmp"]
    # the same 8 rows per model call from every source: bit-identical logits
    common = ["--ckpt", str(c["ckpt"]), "--batch-size", "8"]
    assert _search("--input", str(c["parquet"]), "--out", str(tmp / "s_parquet"), *common) == 0
    assert _search("--input", str(c["fits"]), "--catalog", str(c["catalog"]), "--chunk-size",
                   "8", "--out", str(tmp / "s_fits"), *common) == 0  # fmt: skip
    assert _search("--input", str(c["shards"]), "--out", str(tmp / "s_shards"), *common) == 0
    a, b, s = (_logits(tmp / f"s_{k}") for k in ("parquet", "fits", "shards"))
    assert set(a) == set(c["ids"])
    assert a == s == b
    assert len(set(a.values())) == len(a)  # the model tells the cutouts apart
    for name in ("s_parquet", "s_shards", "s_fits"):
        assert pq.read_table(tmp / name / "rejects.parquet").num_rows == 0


def test_outputs_are_ranked_and_complete(cutouts):
    tmp = cutouts["tmp"]
    out = tmp / "s_parquet_b4"
    assert _search("--input", str(cutouts["parquet"]), "--ckpt", str(cutouts["ckpt"]),
                   "--batch-size", "4", "--top-n", "5", "--out", str(out)) == 0  # fmt: skip
    t = pq.read_table(out / "candidates.parquet")
    assert t.schema.names == ["id", "ra", "dec", "logit", "score", "logit_0", "rank"]
    assert str(t.schema.field("id").type) == "string"
    logit = t.column("logit").to_numpy()
    assert (np.diff(logit) <= 0).all() and t.column("rank").to_pylist() == list(range(1, 25))
    score = t.column("score").to_numpy()
    np.testing.assert_allclose(score, 1 / (1 + np.exp(-logit.astype(np.float64))), rtol=1e-6)
    ref = _logits(tmp / "s_parquet")  # batch 8 vs 4: CPU convolutions differ in the last bits
    np.testing.assert_allclose([ref[i] for i in t.column("id").to_pylist()], logit, atol=1e-5)
    top = (out / "top5.csv").read_text().splitlines()
    assert top[0].replace('"', "").split(",")[:2] == ["id", "ra"] and len(top) == 6
    assert top[1].replace('"', "").split(",")[0] == t.column("id")[0].as_py()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 24 and summary["scored"] == 24 and summary["rejected"] == 0
    assert summary["chunks"] == 3 and summary["cutouts_per_s"] > 0
    assert (out / "candidates.html").is_file()


def test_ensemble_keeps_each_models_logit_and_averages(cutouts):
    tmp = cutouts["tmp"]
    other = make_checkpoint(tmp / "run2" / "best.pt", seed=1)
    out = tmp / "s_ensemble"
    assert _search("--input", str(cutouts["parquet"]), "--ckpt", str(cutouts["ckpt"]),
                   str(other), "--batch-size", "8", "--out", str(out)) == 0  # fmt: skip
    t = pq.read_table(out / "candidates.parquet")
    l0, l1 = t.column("logit_0").to_numpy(), t.column("logit_1").to_numpy()
    mean = ((l0.astype(np.float64) + l1) / 2).astype(np.float32)
    assert mean.tobytes() == t.column("logit").to_numpy().tobytes()
    single = _logits(tmp / "s_parquet")  # model 0 alone
    assert [single[i] for i in t.column("id").to_pylist()] == l0.tolist()
    assert not np.array_equal(l0, l1)


def test_d4_tta_is_the_mean_over_views(cutouts):
    tmp = cutouts["tmp"]
    out = tmp / "s_tta"
    first = write_parquet(pq.read_table(cutouts["parquet"]).slice(0, 8), tmp / "first8.parquet")
    assert _search("--input", str(first), "--ckpt", str(cutouts["ckpt"]),
                   "--batch-size", "8", "--tta", "--out", str(out)) == 0  # fmt: skip
    tta, plain = _logits(out), _logits(tmp / "s_parquet")
    assert set(tta) == set(cutouts["ids"][:8])
    assert all(tta[k] != plain[k] for k in tta)  # random stamps are not D4-symmetric
    assert json.loads((out / "summary.json").read_text())["tta"] == "d4"


def test_grades_are_joined_back(cutouts):
    tmp = cutouts["tmp"]
    grades = tmp / "grades.csv"
    ids = cutouts["ids"]
    grades.write_text(f"id,grade\n{ids[0]},A\n{ids[1]},C\nnot-a-candidate,B\n")
    out = tmp / "s_parquet"  # finished: re-running only re-writes the outputs
    assert _search("--input", str(cutouts["parquet"]), "--ckpt", str(cutouts["ckpt"]),
                   "--batch-size", "8", "--grades", str(grades), "--out", str(out)) == 0  # fmt: skip
    t = pq.read_table(out / "candidates.parquet")
    got = dict(zip(t.column("id").to_pylist(), t.column("grade").to_pylist(), strict=True))
    assert got[ids[0]] == "A" and got[ids[1]] == "C" and got[ids[2]] is None


def test_parquet_search_scores_equal_infer(tmp_path):
    data = make_dataset(tmp_path / "data", num_rows=12, row_group_rows=6)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    assert haloscope(["infer", "--ckpt", str(ckpt), "--data", str(data), "--split", "val",
                      "--out", str(tmp_path / "infer.parquet"), "--batch-size", "1",
                      "--device", "cpu", "--no-progress", "--num-workers", "0"]) == 0  # fmt: skip
    assert _search("--input", str(data / "region_split=val"), "--ckpt", str(ckpt),
                   "--batch-size", "1", "--out", str(tmp_path / "search")) == 0  # fmt: skip
    inf = pq.read_table(tmp_path / "infer.parquet")
    ref = dict(zip(inf.column("task_id").to_pylist(), inf.column("logit").to_pylist(), strict=True))
    got = _logits(tmp_path / "search")
    assert (
        len(ref) == 10
    )  # row 4 has cutout_ok = 0; infer also cuts the unresolved lens (a truth column search lacks)
    assert {k: got[k] for k in ref} == ref  # one row per model call: bit-exact
    assert len(got) == 11
