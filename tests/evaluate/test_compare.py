"""Side-by-side comparison of models on the same test set."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import DataError
from haloscope.evaluate import metrics
from haloscope.evaluate.compare import compare_generations


def _with_logit(table: pa.Table, logit: np.ndarray, model: str) -> pa.Table:
    table = table.set_column(
        table.schema.get_field_index("logit"), "logit", pa.array(logit, pa.float32())
    )
    score = (1 / (1 + np.exp(-logit))).astype(np.float32)
    table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(score))
    return table.set_column(
        table.schema.get_field_index("model"), "model", pa.array([model] * len(logit))
    )


def test_compare_values_deltas_and_outputs(tmp_path, make_scores):
    base = make_scores(2000, seed=3)
    labels = np.asarray(base["label"])
    better = _with_logit(base, np.asarray(base["logit"]) + 4.0 * labels, "gen4")
    pq.write_table(better, tmp_path / "gen4.parquet")
    comp = compare_generations({"gen3": base, "gen4": tmp_path / "gen4.parquet"})
    gen3, gen4 = comp.rows
    ref = metrics.tpr_at_fpr(labels, np.asarray(base["logit"]), 1e-3)
    assert gen3["tpr@fpr1e-3"]["k"] == ref.num_tp and gen3["tpr@fpr1e-3"]["value"] == ref.tpr
    assert gen3["auroc"]["value"] == pytest.approx(metrics.auroc(labels, np.asarray(base["logit"])))
    assert gen4["tpr@fpr1e-3"]["delta"] > 0 and gen4["tpr@fpr1e-3"]["disjoint"]
    assert gen4["fpr@tpr0.9"]["delta"] < 0
    md = comp.to_markdown()
    assert md.splitlines()[0].startswith("| model | lenses | controls | TPR@FPR1e-4")
    assert "| gen4 |" in md and "CIs disjoint" in md
    rows = list(csv.DictReader(comp.to_csv(tmp_path / "cmp.csv").open()))
    assert [r["model"] for r in rows] == ["gen3", "gen4"] and rows[0]["TPR@FPR1e-3_delta"] == ""
    assert (
        float(rows[1]["AUROC_ci_low"]) <= float(rows[1]["AUROC"]) <= float(rows[1]["AUROC_ci_high"])
    )


def test_compare_refuses_different_test_sets(make_scores):
    a = make_scores(300, seed=1)
    b = make_scores(300, seed=2)
    with pytest.raises(DataError, match="not the same test set"):
        compare_generations({"a": a, "b": b})
    assert len(compare_generations({"a": a, "b": b}, require_same_rows=False).rows) == 2
