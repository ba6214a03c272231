"""Stratified completeness/FPR on a hand-built table with hand-computed values."""

from __future__ import annotations

import csv
import math

import numpy as np
import pyarrow as pa
import pytest

from haloscope.evaluate import metrics
from haloscope.evaluate.intervals import wilson_interval
from haloscope.evaluate.scores import scores_from_table
from haloscope.evaluate.stratify import DEFAULT_STRATA, stratify, write_stratified_csv

NAN = float("nan")
# 10 controls (2 rings scoring high) and 4 lenses in two theta_E bins
CONTROL_SCORES = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
LENS_SCORES = [0.99, 0.92, 0.85, 0.3]


def _hand_table(with_logit: bool) -> pa.Table:
    score = np.array(CONTROL_SCORES + LENS_SCORES)
    cols = {
        "label": pa.array([0] * 10 + [1] * 4, pa.int8()),
        "score": score.astype(np.float32),
        "theta_e_arcsec": [NAN] * 10 + [1.6, 0.6, 1.6, 0.6],
        "psfsize_r": [1.0] * 14,
        "src_dmag": [NAN] * 14,
        "control_kind": ["ring", "ring"] + ["plain"] * 8 + [None] * 4,
    }
    if with_logit:
        cols["logit"] = np.log(score / (1 - score))
    return pa.table(cols)


def _run(with_logit: bool = False):
    frame = scores_from_table(_hand_table(with_logit))
    return stratify(frame, fpr_targets=(0.1, 0.2), tpr_targets=(0.5, 0.99))


def _row(result, name):
    return next(r for r in result.rows if r["stratum"] == name)


def test_hand_computed_completeness_and_fpr():
    result = _run()
    # FPR 0.1 allows 1 of 10 controls -> 2nd control 0.9 fails -> threshold 0.92 (next score up)
    thresholds = [p.threshold for p in result.global_points["tpr@fpr"]]
    assert thresholds == pytest.approx([0.92, 0.85])
    all_row = _row(result, "ALL")
    assert [e["k"] for e in all_row["tpr@fpr"]] == [2, 3] and all_row["P"] == 4
    hi_theta = _row(result, "theta[1.5,2)")  # lenses 0.99, 0.85
    assert [(e["k"], e["n"]) for e in hi_theta["tpr@fpr"]] == [(1, 2), (2, 2)]
    # FPR@TPR0.5 needs 1 lens -> t=0.99 -> 0 controls; TPR0.99 needs 2 -> t=0.85 -> 2 controls
    assert [e["value"] for e in hi_theta["fpr@tpr"]] == [0.0, 0.2]
    lo_theta = _row(result, "theta[0.5,0.75)")  # lenses 0.92, 0.3
    assert [e["value"] for e in lo_theta["tpr@fpr"]] == [0.5, 0.5]
    assert [e["value"] for e in lo_theta["fpr@tpr"]] == [0.1, 0.8]
    rings = _row(result, "controls:control_kind=ring")
    assert [(e["k"], e["n"]) for e in rings["fpr_obs@fpr"]] == [(1, 2), (2, 2)]
    plain = _row(result, "controls:control_kind=plain")
    assert [e["k"] for e in plain["fpr_obs@fpr"]] == [0, 0]
    lo, hi = wilson_interval(1, 2)
    assert (rings["fpr_obs@fpr"][0]["ci_low"], rings["fpr_obs@fpr"][0]["ci_high"]) == (lo, hi)


def test_stratum_fpr_at_tpr_matches_metrics_on_the_union():
    result = _run()
    table = _hand_table(False)
    score = np.asarray(table["score"]).astype(float)
    label = np.asarray(table["label"])
    in_bin = (label == 0) | (np.nan_to_num(np.asarray(table["theta_e_arcsec"])) > 1.5)
    for entry in _row(result, "theta[1.5,2)")["fpr@tpr"]:
        ref = metrics.fpr_at_tpr(label[in_bin], score[in_bin], entry["target"])
        assert entry["value"] == ref.fpr and entry["threshold"] == pytest.approx(ref.threshold)


def test_logit_ranking_reports_score_thresholds():
    by_logit, by_score = _run(with_logit=True), _run()
    assert by_logit.rows[0]["tpr@fpr"][0]["threshold"] == pytest.approx(0.92, rel=1e-6)
    assert [r["stratum"] for r in by_logit.rows] == [r["stratum"] for r in by_score.rows]


def test_absent_or_null_columns_are_skipped():
    result = _run()
    assert result.skipped["arc_snr"] == "column absent"
    assert result.skipped["src_dmag:positives"] == "all null for positives"
    assert "theta_over_psf" not in result.skipped  # derived from theta_e / psfsize_r
    assert any(r["stratum"].startswith("res[") for r in result.rows)


def test_csv_has_seed_columns_first(tmp_path):
    path = write_stratified_csv(_run(), tmp_path / "strat.csv")
    rows = list(csv.DictReader(path.open()))
    header = list(rows[0])
    assert header[:8] == [
        "stratum",
        "n",
        "P",
        "N",
        "FPR@TPR0.50",
        "thr@TPR0.50",
        "FPR@TPR0.99",
        "thr@TPR0.99",
    ]
    assert header[8:12] == ["TPR@FPR0.1", "thr@FPR0.1", "TPR@FPR0.2", "thr@FPR0.2"]
    row = next(r for r in rows if r["stratum"] == "theta[1.5,2)")
    assert (row["n"], row["P"], row["N"], row["TPR@FPR0.1"], row["thr@FPR0.1"]) == (
        "12",
        "2",
        "10",
        "0.5",
        "0.92",
    )
    assert float(row["TPR@FPR0.1_ci_low"]) < 0.5 < float(row["TPR@FPR0.1_ci_high"])
    ring = next(r for r in rows if r["stratum"] == "controls:control_kind=ring")
    assert ring["TPR@FPR0.1"] == "" and ring["FPRobs@FPR0.1"] == "0.5"


def test_default_strata_on_a_full_table(scores_table):
    result = stratify(scores_from_table(scores_table))
    kinds = {r["column"] for r in result.rows}
    assert {spec.column for spec in DEFAULT_STRATA} <= kinds
    for row in result.rows:
        for entry in row.get("tpr@fpr", []) + row.get("fpr_obs@fpr", []):
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    # positives of the theta strata add up to all positives in range
    theta_rows = [r for r in result.rows if r["column"] == "theta_e_arcsec"]
    assert sum(r["P"] for r in theta_rows) == result.rows[0]["P"]
    assert math.isclose(
        sum(
            r["N"] for r in result.rows if r["kind"] == "controls" and r["column"] == "control_kind"
        ),
        result.rows[0]["N"],
    )


def test_non_numeric_strata_column_is_skipped_not_fatal():
    table = _hand_table(False).append_column("arc_snr", pa.array(["high"] * 14))
    result = stratify(scores_from_table(table), fpr_targets=(0.1,), tpr_targets=(0.5,))
    assert result.skipped["arc_snr"].startswith("not numeric")
