"""`haloscope gen4 --tiny` end to end on CPU: both generations in the table, resumable."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

STAGES = ["simulate", "shards_gen3", "train_gen3", "infer_gen3_train", "mine", "shards_gen4",
          "reuse_eval_shards", "train_gen4", "infer_gen3_test", "infer_gen4_test", "eval_gen3",
          "eval_gen4", "compare"]  # fmt: skip


def _gen4(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "haloscope", "gen4", "--out", str(out), "--tiny",
                           "--quiet", *extra], capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("gen4") / "exp"
    t0 = time.perf_counter()
    proc = _gen4(out)
    wall_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, wall_s


def test_both_generations_are_in_the_side_by_side_table(experiment):
    out, wall_s = experiment
    print(f"tiny gen4 wall time: {wall_s:.1f} s")
    doc = json.loads((out / "gen3_vs_gen4.json").read_text())
    assert [row["model"] for row in doc["rows"]] == ["gen3", "gen4"]
    for row in doc["rows"]:
        m = row["tpr@fpr1e-4"]
        assert 0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1
    with (out / "gen3_vs_gen4.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["gen3", "gen4"] and "TPR@FPR1e-4_ci_low" in rows[0]
    md = (out / "gen3_vs_gen4.md").read_text()
    assert "| gen3 |" in md and "| gen4 |" in md and "wall time" in md
    for gen in ("gen3", "gen4"):
        assert (out / gen / "report" / "report.md").is_file()
        assert (out / gen / "stratified_fpr.csv").is_file()


def test_same_test_rows_and_mining_from_train_only(experiment):
    out, _ = experiment
    g3 = pq.read_table(out / "gen3" / "scores_test.parquet")
    g4 = pq.read_table(out / "gen4" / "scores_test.parquet")
    assert g3.column("task_id").equals(g4.column("task_id")) and g3.num_rows > 100
    assert set(g3.column("model").to_pylist()) == {"gen3"}
    assert set(g4.column("model").to_pylist()) == {"gen4"}
    mined = pq.read_table(out / "gen3" / "scores_train.parquet")
    assert set(mined.column("split").to_pylist()) == {"train"}
    lookup = pq.read_table(out / "hard_neg_lookup.parquet")
    assert 0 < lookup.num_rows <= 60
    reuse = json.loads((out / "stages" / "reuse_eval_shards.json").read_text())
    assert reuse["test"]["sha256_verified"] and reuse["test"]["lookup_matches"] == 0
    assert reuse["train"]["gen4_samples"] > reuse["train"]["gen3_samples"]
    assert (out / "shards" / "gen4" / "test").resolve() == (
        out / "shards" / "gen3" / "test"
    ).resolve()


def test_every_stage_is_logged_with_its_wall_time(experiment):
    out, _ = experiment
    for name in STAGES:
        marker = json.loads((out / "stages" / f"{name}.json").read_text())
        assert marker["stage"] == name and marker["wall_s"] >= 0
    train = json.loads((out / "stages" / "train_gen4.json").read_text())
    assert train["command"][:2] == ["haloscope", "train"] and "--seed" in train["command"]
    assert "training completed" in (out / "logs" / "train_gen4.log").read_text()


def test_rerun_skips_done_stages_and_redoes_invalidated_ones(experiment):
    out, _ = experiment
    before = (out / "gen3_vs_gen4.json").read_text()
    (out / "stages" / "infer_gen4_test.json").unlink()  # as if killed during this stage
    proc = _gen4(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in STAGES[:9]:
        assert f"stage {name}: done earlier" in proc.stderr
    for name in STAGES[9:]:
        assert f"stage {name}: done in" in proc.stderr
    after = json.loads((out / "gen3_vs_gen4.json").read_text())
    assert after["rows"] == json.loads(before)["rows"]  # the same models give the same table


def test_resume_with_other_settings_is_refused(experiment):
    out, _ = experiment
    proc = _gen4(out, "--epochs", "3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "epochs" in proc.stderr and "new --out" in proc.stderr
