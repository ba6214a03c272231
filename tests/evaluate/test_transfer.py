"""Transfer check: a second lens set scored at the reference's thresholds."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import DataError
from haloscope.evaluate.scores import scores_from_table
from haloscope.evaluate.transfer import transfer_check
from tests.evaluate.conftest import make_scores_table


def _table(logits, labels, snr, kinds=None):
    n = len(logits)
    return pa.table(
        {
            "task_id": [f"x{i}" for i in range(n)],
            "label": pa.array(labels, pa.int8()),
            "logit": pa.array(logits, pa.float32()),
            "score": pa.array(np.zeros(n), pa.float32()),
            "arc_snr": pa.array(snr, pa.float64()),
            "theta_e_arcsec": [1.5 if y else 0.0 for y in labels],
            "psf_fwhm_r": [1.0] * n,
            "control_kind": kinds or [None if y else "ordinary" for y in labels],
        }
    )


def test_ratios_at_the_reference_threshold_by_hand():
    # reference: 1000 controls with logits 0..999 -> at FPR 1e-3 one control may pass: the
    # threshold is the top control's logit, 999. Lenses in the arc_snr 5-10 bin: 4 of 8 pass.
    ctrl = np.arange(1000.0)
    ref_lens = np.array([2000, 2000, 2000, 2000, 10, 10, 10, 10.0])
    ref = _table(np.r_[ctrl, ref_lens], [0] * 1000 + [1] * 8, [math.nan] * 1000 + [7.0] * 8)
    # target: lenses in the same bin, 1 of 8 above 999; a blue_companion control above it
    tgt_lens = np.array([1500, 5, 5, 5, 5, 5, 5, 5.0])
    kinds = ["blue_companion", "blue_companion"] + [None] * 8
    tgt = _table(
        np.r_[[1200.0, 3.0], tgt_lens], [0, 0] + [1] * 8, [math.nan] * 2 + [7.0] * 8, kinds
    )
    check = transfer_check(scores_from_table(tgt), scores_from_table(ref), (1e-3,))
    assert check["thresholds"] == {"0.001": 999.0}
    row = next(r for r in check["rows"] if r["column"] == "arc_snr" and r["bin"] == "[5, 10)")
    assert row["target"]["k"] == 1 and row["reference"]["k"] == 4
    assert row["ratio"] == pytest.approx((1 / 8) / (4 / 8))
    kind = next(r for r in check["rows"] if r["kind"] == "controls")
    assert kind["bin"] == "blue_companion" and kind["target"]["rate"] == 0.5
    assert kind["reference"]["n"] == 0 and math.isnan(kind["ratio"])


def test_rank_by_must_agree():
    ref = scores_from_table(make_scores_table(200, 0))
    tgt = scores_from_table(make_scores_table(200, 1).drop_columns(["logit"]))
    with pytest.raises(DataError, match="ranks by"):
        transfer_check(tgt, ref)


def test_eval_cli_writes_the_transfer_csv(tmp_path):
    ref, tgt = tmp_path / "ref.parquet", tmp_path / "tgt.parquet"
    pq.write_table(make_scores_table(3000, 0), ref)
    pq.write_table(make_scores_table(800, 1), tgt)
    out = tmp_path / "o" / "strat.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "eval", "--scores", str(tgt), "--out-csv", str(out),
         "--reference-scores", str(ref)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "transfer ratio at FPR 0.001 by arc SNR" in proc.stdout
    rows = list(csv.DictReader(open(out.with_name("strat_transfer.csv"))))
    assert {r["column"] for r in rows} == {"arc_snr", "theta_over_psf", "control_kind"}
    assert {r["bin"] for r in rows if r["column"] == "arc_snr"} == {
        "[5, 10)",
        "[10, 20)",
        "[20, inf)",
    }
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["transfer"]["thresholds"].keys() == {"0.0001", "0.001"}


def test_lens_and_control_rows_come_from_one_row_builder():
    check = transfer_check(
        scores_from_table(make_scores_table(800, 1)), scores_from_table(make_scores_table(3000, 0))
    )
    kinds = {r["kind"] for r in check["rows"]}
    assert kinds == {"lenses", "controls"}
    fields = {"kind", "column", "bin", "fpr", "threshold", "target", "reference", "ratio"}
    for row in check["rows"]:
        assert row.keys() == fields
        assert row["threshold"] == check["thresholds"][f"{row['fpr']:g}"]
        t, r = row["target"]["rate"], row["reference"]["rate"]
        expected = t / r if r > 0 else math.nan
        assert row["ratio"] == pytest.approx(expected, nan_ok=True)
