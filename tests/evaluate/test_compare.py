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
from haloscope.evaluate.detectable import DEFAULT_DETECTABLE


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
    assert md.splitlines()[0] == "| metric | gen3 | gen4 |"
    assert "| TPR@FPR1e-4 |" in md and "CIs disjoint" in md
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


def test_detectable_rows_come_first(tmp_path, make_scores):
    base = make_scores(2000, seed=3)
    labels, logit = np.asarray(base["label"]), np.asarray(base["logit"]).astype(float)
    better = _with_logit(base, logit + 4.0 * labels, "gen4")
    comp = compare_generations({"gen3": base, "gen4": better})
    det = np.asarray(base["arc_snr"]) >= 5
    det &= np.asarray(base["theta_e_arcsec"]) / np.asarray(base["psfsize_r"]) >= 0.8
    gen3 = comp.rows[0]["detectable"]
    assert gen3["status"] == "ok" and gen3["num_pos"] == int(det.sum())
    threshold = metrics.tpr_at_fpr(labels, logit, 1e-3).threshold  # from all controls
    assert gen3["tpr@fpr1e-3"]["k"] == int((logit[det] >= threshold).sum())
    union = det | (labels == 0)
    ref = metrics.fpr_at_tpr(labels[union], logit[union], 0.9)
    assert gen3["fpr@tpr0.9"]["k"] == ref.num_fp and gen3["fpr@tpr0.9"]["n"] == 2000 - labels.sum()
    assert comp.rows[1]["detectable"]["tpr@fpr1e-3"]["delta"] > 0
    heads, rows = comp.table()
    assert [r[0] for r in rows[:5]] == [
        "detectable lenses",
        "detectable TPR@FPR1e-4",
        "detectable TPR@FPR1e-3",
        "detectable FPR@TPR0.9",
        "lenses (all)",
    ]
    assert "Detectable subset: arc_snr >= 5 and theta_E/psfsize_r >= 0.8" in comp.to_markdown()
    header = next(csv.reader(comp.to_csv(tmp_path / "cmp.csv").open()))
    assert header[:5] == [
        "model",
        "detectable_num_pos",
        "num_pos",
        "num_neg",
        "detectable_TPR@FPR1e-4",
    ]
    assert header.index("detectable_FPR@TPR0.9") < header.index("TPR@FPR1e-4")


def test_compare_without_subset_columns_says_why(tmp_path, make_scores):
    base = make_scores(400, seed=1).drop_columns(["arc_snr"])
    comp = compare_generations({"a": base, "b": base})
    assert comp.rows[0]["detectable"] == {
        "status": "not evaluated",
        "reason": "column 'arc_snr' absent",
    }
    assert comp.table()[1][0][0] == "lenses (all)"
    assert "not evaluated for a: column 'arc_snr' absent" in comp.to_markdown()
    row = next(csv.DictReader(comp.to_csv(tmp_path / "c.csv").open()))
    assert row["detectable_TPR@FPR1e-4"] == "" and row["detectable"] == DEFAULT_DETECTABLE
    assert row["detectable_reason"] == "column 'arc_snr' absent"
    off = compare_generations({"a": base}, detectable="none")
    assert off.rows[0]["detectable"]["status"] == "off" and "subset: off" in off.to_markdown()
