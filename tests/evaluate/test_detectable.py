"""The detectable subset: the --detectable parser, and the headline's operating points on a
hand-built table at thresholds set on all controls."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import ConfigError
from haloscope.evaluate import metrics
from haloscope.evaluate.cli import main
from haloscope.evaluate.detectable import (
    DEFAULT_DETECTABLE,
    Condition,
    detectable_mask,
    parse_detectable,
)
from haloscope.evaluate.scores import scores_from_table
from haloscope.evaluate.stratify import stratify, write_stratified_csv

NAN = float("nan")
# 20 controls, 3 of them high; 6 lenses in the subset, 4 outside it (2 of those high)
CONTROLS = [0.99, 0.97, 0.95] + [0.5 - 0.02 * i for i in range(17)]
IN_SUBSET = [0.995, 0.98, 0.96, 0.9, 0.6, 0.3]
OUTSIDE = [0.999, 0.985, 0.2, 0.1]
# outside: too faint (snr 3), unresolved (theta/psfsize 0.5), faint, unresolved
OUT_SNR, OUT_THETA = [3.0, 8.0, 4.9, 20.0], [1.2, 0.6, 1.2, 0.7]


def _table(**extra: list) -> pa.Table:
    num_c, num_l = len(CONTROLS), len(IN_SUBSET) + len(OUTSIDE)
    cols = {
        "label": pa.array([0] * num_c + [1] * num_l, pa.int8()),
        "score": np.array(CONTROLS + IN_SUBSET + OUTSIDE, np.float32),
        "arc_snr": [NAN] * num_c + [5.0, 6, 9, 30, 12, 5.5] + OUT_SNR,
        "theta_e_arcsec": [NAN] * num_c + [0.96, 1.0, 1.5, 2.0, 1.2, 1.1] + OUT_THETA,
        "psfsize_r": [1.2] * (num_c + num_l),  # 0.96 / 1.2 = 0.8 exactly: in
        # the PSF the strata prefer; the subset must not use it
        "psf_fwhm_r": [2.0] * (num_c + num_l),
    }
    return pa.table(cols | extra)


def _stratify(table: pa.Table, spec: str = DEFAULT_DETECTABLE):
    frame = scores_from_table(table)
    return stratify(
        frame, (), fpr_targets=(0.05, 0.1), tpr_targets=(0.5,), detectable=parse_detectable(spec)
    )


@pytest.mark.parametrize(
    "text, conditions",
    [
        (DEFAULT_DETECTABLE, [("arc_snr", ">=", 5.0), ("theta_over_psf", ">=", 0.8)]),
        (
            " arc_snr_sum > 1e2 , magnification<=-0.5",
            [("arc_snr_sum", ">", 100.0), ("magnification", "<=", -0.5)],
        ),
        ("arc_snr>=5,arc_snr<20", [("arc_snr", ">=", 5.0), ("arc_snr", "<", 20.0)]),
        ("src_redshift<.5", [("src_redshift", "<", 0.5)]),
    ],
)
def test_parser_reads_good_specs(text, conditions):
    spec = parse_detectable(text)
    assert spec.conditions == tuple(Condition(*c) for c in conditions)
    assert parse_detectable(spec.text) == spec  # the canonical form reads back


def test_parser_none_turns_it_off_and_describes_the_default():
    assert parse_detectable("none") is None and parse_detectable(" None ") is None
    assert parse_detectable(DEFAULT_DETECTABLE).describe() == (
        "arc_snr >= 5 and theta_E/psfsize_r >= 0.8"
    )


@pytest.mark.parametrize(
    "text, bad",
    [
        ("", "''"),
        ("arc_snr=5", "'arc_snr=5'"),
        ("arc_snr==5", "'arc_snr==5'"),
        ("arc_snr != 5", "'arc_snr != 5'"),
        ("snr>=5", "unknown column 'snr'"),
        ("arc_snr>=five", "'arc_snr>=five'"),
        ("arc_snr>=nan", "'arc_snr>=nan'"),
        ("arc_snr>=inf", "'arc_snr>=inf'"),
        ("arc_snr>=5,", "condition 2 of 2"),
        ("arc_snr>=5 and theta_over_psf>=0.8", "condition 1 of 1"),
        ("arc_snr>=5;theta_over_psf>=0.8", "condition 1 of 1"),
        ("score>=0.5", "unknown column 'score'"),
    ],
)
def test_parser_refuses_bad_specs_with_one_clear_error(text, bad):
    with pytest.raises(ConfigError) as err:
        parse_detectable(text)
    message = str(err.value)
    assert message.startswith("--detectable: cannot read") and bad in message
    assert "\n" not in message and "arc_snr>=5,theta_over_psf>=0.8" in message


def test_subset_operating_points_are_hand_computed():
    result = _stratify(_table())
    det = result.detectable
    assert det["status"] == "ok" and det["spec"] == DEFAULT_DETECTABLE
    assert (det["num_lenses"], det["num_all_lenses"], det["share_of_lenses"]) == (6, 10, 0.6)
    # FPR 0.05 allows 1 of 20 controls: 0.99 passes, 0.97 not -> threshold 0.98 (a lens score);
    # FPR 0.1 allows 2 -> threshold 0.96
    thresholds = [e["threshold"] for e in det["tpr@fpr"]]
    assert thresholds == pytest.approx([0.98, 0.96])
    assert [(e["k"], e["n"]) for e in det["tpr@fpr"]] == [(2, 6), (3, 6)]
    assert [e["value"] for e in det["tpr@fpr"]] == pytest.approx([1 / 3, 0.5])
    # all injections at the same thresholds: 0.999, 0.995, 0.985, 0.98 (+ 0.96)
    assert [e["k"] for e in result.rows[0]["tpr@fpr"]] == [4, 5]
    # FPR@TPR0.5 of the subset: 3 of 6 lenses -> t = 0.96 -> controls 0.99, 0.97 of 20
    (fpr,) = det["fpr@tpr"]
    assert (fpr["k"], fpr["n"], fpr["value"]) == (2, 20, 0.1)
    assert all(e["ci_low"] <= e["value"] <= e["ci_high"] for e in det["tpr@fpr"] + det["fpr@tpr"])


def test_thresholds_come_from_all_controls():
    table = _table()
    label, score = np.asarray(table["label"]), np.asarray(table["score"], np.float64)
    expected = [metrics.tpr_at_fpr(label, score, f).threshold for f in (0.05, 0.1)]
    # another subset, a subset with other members, and no subset: the same thresholds
    more_snr = _table(arc_snr=[NAN] * 20 + [1.0] * 6 + [50.0] * 4)
    for result in (
        _stratify(table),
        _stratify(table, "arc_snr>=8"),
        _stratify(table, "none"),
        _stratify(more_snr),
    ):
        assert [p.threshold for p in result.global_points["tpr@fpr"]] == expected
        if result.detectable["status"] == "ok":
            got = [e["threshold"] for e in result.detectable["tpr@fpr"]]
            assert got == pytest.approx(expected)
    moved = _stratify(more_snr).detectable  # now 0.999 and 0.2 (the resolved ones of OUTSIDE)
    assert (moved["num_lenses"], [e["k"] for e in moved["tpr@fpr"]]) == (2, [1, 1])


def test_subset_uses_psfsize_r_and_counts_missing_values():
    table = _table().drop_columns(["psfsize_r"])
    det = _stratify(table).detectable  # psf_fwhm_r is present but is not the proxy's PSF
    assert det["status"] == "not evaluated" and det["reason"] == "column 'psfsize_r' absent"
    assert "psfsize_r" in det["theta_over_psf"]
    snr = [NAN] * 20 + [NAN, 6, 9, 30, 12, 5.5] + OUT_SNR
    det = _stratify(_table(arc_snr=snr)).detectable
    assert (det["num_lenses"], det["num_undefined"]) == (5, 1)


def test_missing_columns_give_all_injections_only(tmp_path):
    result = _stratify(_table().drop_columns(["arc_snr"]))
    doc = result.to_dict()
    assert doc["detectable"]["status"] == "not evaluated"
    assert doc["detectable"]["reason"] == "column 'arc_snr' absent"
    assert "tpr@fpr" not in doc["detectable"] and doc["strata"][0]["stratum"] == "ALL"
    rows = list(csv.DictReader(write_stratified_csv(result, tmp_path / "s.csv").open()))
    assert [r["stratum"] for r in rows] == ["ALL"]
    null_snr = _table(arc_snr=pa.nulls(30, pa.float64()))
    assert _stratify(null_snr).detectable["reason"] == "arc_snr is null for every lens"
    assert _stratify(_table(), "none").to_dict()["detectable"]["status"] == "off"


def test_csv_puts_the_subset_first(tmp_path):
    rows = list(
        csv.DictReader(write_stratified_csv(_stratify(_table()), tmp_path / "s.csv").open())
    )
    assert [r["stratum"] for r in rows] == ["detectable", "ALL"]
    det = rows[0]
    assert (det["P"], det["N"], det["TPR@FPR0.1"], det["thr@FPR0.1"]) == ("6", "20", "0.5", "0.96")
    assert det["column"] == DEFAULT_DETECTABLE and det["kind"] == "positives"


def test_mask_on_the_default_fixture(scores_table):
    frame = scores_from_table(scores_table)
    subset = detectable_mask(frame, parse_detectable(DEFAULT_DETECTABLE))
    cols = frame.columns
    expected = (frame.labels == 1) & (cols["arc_snr"] >= 5)
    expected &= cols["theta_e_arcsec"] / cols["psfsize_r"] >= 0.8
    assert np.array_equal(subset.mask, expected) and 0 < expected.sum() < frame.labels.sum()


def test_eval_reports_the_subset_auroc_against_all_controls(tmp_path):
    pq.write_table(_table(), tmp_path / "scores.parquet")
    assert main(["--scores", str(tmp_path / "scores.parquet"),
                 "--out-csv", str(tmp_path / "s.csv")]) == 0  # fmt: skip
    det = json.loads((tmp_path / "s.json").read_text())["detectable"]
    # 6 subset lenses x 20 controls: 20 + 19 + 18 + 17 + 17 + 6.5 pairs ranked right (the
    # lens at 0.3 ties the control at 0.5 - 0.02 * 10: half a pair); the 4 outside are ignored
    assert det["auroc"] == pytest.approx(97.5 / 120)
