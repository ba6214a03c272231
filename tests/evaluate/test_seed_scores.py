"""The seed's scores tables (``is_control`` / ``y_true``, ``score`` only) through eval, mine
and the generation comparison; one function picks the label column and says which."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import DataError
from haloscope.evaluate.compare import compare_generations
from haloscope.evaluate.scores import LABEL_COLUMNS, resolve_labels, scores_from_table

HALOSCOPE = str(Path(sys.executable).with_name("haloscope"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HALOSCOPE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "columns, expected",
    [
        ({"label": [1, 0], "y_true": [0, 1], "is_control": [1, 0]}, ("label", [1, 0])),
        ({"y_true": [0.0, 1.0], "is_control": [0, 1]}, ("y_true", [0, 1])),
        ({"is_control": pa.array([1, 0], pa.int32())}, ("is_control", [0, 1])),
        ({"is_control": [True, False]}, ("is_control", [0, 1])),
    ],
)
def test_label_comes_from_label_then_y_true_then_is_control(columns, expected):
    table = pa.table({**columns, "score": pa.array([0.2, 0.7], pa.float32())})
    labels, used = resolve_labels(table, "t.parquet")
    assert (used, labels.tolist()) == expected and labels.dtype == np.int8
    assert LABEL_COLUMNS == ("label", "y_true", "is_control")
    frame = scores_from_table(table, "t.parquet")
    assert frame.label_column == expected[0] and frame.labels.tolist() == expected[1]


def test_no_label_column_names_all_three():
    with pytest.raises(DataError, match="'label', 'y_true' or 'is_control'"):
        resolve_labels(pa.table({"score": [0.1]}), "t.parquet")
    with pytest.raises(DataError, match="column 'is_control' must be 0 .* or 1"):
        resolve_labels(pa.table({"is_control": [0, 2], "score": [0.1, 0.2]}), "t.parquet")


def test_eval_cli_on_a_seed_scores_table(tmp_path, make_seed_scores):
    seed = make_seed_scores()
    pq.write_table(seed, tmp_path / "gen3_test_scores.parquet")
    proc = _run("eval", "--scores", str(tmp_path / "gen3_test_scores.parquet"),
                "--out-csv", str(tmp_path / "out/strat.csv"), "--report-dir", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "labels from column 'is_control' (label = 1 - is_control)" in proc.stderr
    doc = json.loads((tmp_path / "out/strat.json").read_text())
    assert doc["label_column"] == "is_control" and doc["rank_by"] == "score"
    num_lenses = int((np.asarray(seed["is_control"]) == 0).sum())
    assert (
        doc["strata"][0]["P"] == num_lenses and doc["strata"][0]["N"] == seed.num_rows - num_lenses
    )
    # theta_E / PSF strata from the seed's psf_fwhm_used_r
    assert any(r["column"] == "theta_over_psf" for r in doc["strata"])
    md = (tmp_path / "r/report.md").read_text()
    assert "labels from `is_control` (label = 1 - is_control)" in md
    assert "labels from" in (tmp_path / "r/report.html").read_text()


def test_mine_cli_on_a_seed_scores_table(tmp_path, make_seed_scores):
    seed = make_seed_scores(split="train")
    pq.write_table(seed, tmp_path / "gen3_train_scores.parquet")
    out = tmp_path / "lookup.parquet"
    proc = _run("mine", "--scores", str(tmp_path / "gen3_train_scores.parquet"), "--out", str(out),
                "--min-score", "0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "labels from column 'is_control'" in proc.stderr
    lookup = pq.read_table(out)
    controls = {
        round(ra, 6)
        for ra, c, s in zip(
            seed["ra"].to_pylist(),
            seed["is_control"].to_pylist(),
            seed["score"].to_pylist(),
            strict=True,
        )
        if c == 1 and s > 0.5
    }
    assert set(lookup.column("ra_key").to_pylist()) == controls and controls
    provenance = json.loads(lookup.schema.metadata[b"haloscope.mine"])
    assert provenance["label_columns"] == {"gen3_train_scores.parquet": "is_control"}


def test_compare_accepts_seed_and_new_tables_of_the_same_rows(make_scores, make_seed_scores):
    ours, seed = make_scores(seed=4), make_seed_scores(seed=4)
    comp = compare_generations({"seed gen3": seed, "gen4": ours})
    assert [r["label_column"] for r in comp.rows] == ["is_control", "label"]
    assert (
        comp.rows[0]["num_pos"] == comp.rows[1]["num_pos"] == int(np.asarray(ours["label"]).sum())
    )
    assert "labels: seed gen3 from `is_control`, gen4 from `label`" in comp.to_markdown()
