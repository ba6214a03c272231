"""Completeness curves: bins, counts at the thresholds of all controls, skipped columns, PNG."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from haloscope.evaluate import metrics
from haloscope.evaluate.curves import completeness_curves
from haloscope.evaluate.plots import plot_completeness_curve
from haloscope.evaluate.scores import scores_from_table

NAN = float("nan")


def _table() -> pa.Table:
    # 10 controls (0.9 and 0.8 high), 6 lenses with integrated SNR in two quarter decades
    score = [0.9, 0.8] + [0.1] * 8 + [0.95, 0.85, 0.5, 0.99, 0.3, 0.2]
    return pa.table(
        {
            "label": pa.array([0] * 10 + [1] * 6, pa.int8()),
            "score": np.array(score, np.float32),
            "arc_snr_sum": [NAN] * 10 + [10.5, 11.0, 12.0, 60.0, 65.0, -1.0],
            "theta_e_arcsec": [NAN] * 10 + [0.5, 0.7, 1.1, 1.5, 4.0, 2.9],
            "psf_fwhm_r": [1.0] * 16,
        }
    )


def test_bins_and_counts_at_thresholds_from_all_controls():
    frame = scores_from_table(_table())
    out = completeness_curves(frame, fpr_targets=(0.05, 0.1))
    # FPR 0.05 allows no control -> threshold 0.95; FPR 0.1 allows 0.9 -> threshold 0.85
    assert out["thresholds"] == pytest.approx({"0.05": 0.95, "0.1": 0.85})
    label, score = frame.labels, frame.ranking
    assert metrics.tpr_at_fpr(label, score, 0.1).threshold == pytest.approx(0.85)
    snr = out["curves"]["arc_snr_sum"]
    assert snr["scale"] == "log" and snr["num_outside"] == 1  # -1 has no place on a log axis
    assert snr["lo"] == pytest.approx([10, 10**1.75]) and snr["n"] == [3, 2]
    assert snr["x"] == pytest.approx([11.0, 62.5])  # medians of the bins
    assert snr["fpr"]["0.05"]["k"] == [1, 1] and snr["fpr"]["0.1"]["k"] == [2, 1]
    assert snr["fpr"]["0.1"]["value"] == pytest.approx([2 / 3, 0.5])
    lo, hi = snr["fpr"]["0.1"]["ci_low"], snr["fpr"]["0.1"]["ci_high"]
    assert all(a <= v <= b for a, v, b in zip(lo, snr["fpr"]["0.1"]["value"], hi, strict=True))
    res = out["curves"]["theta_over_psf"]  # theta_E / psf_fwhm_r; > 3 in the open last bin
    assert res["hi"][-1] == float("inf") and res["lo"][-1] == pytest.approx(3.0)
    assert sum(res["n"]) == 6 and res["n"][-1] == 1
    assert out["skipped"] == {"arc_lens_flux_ratio": "column absent"}


def test_null_column_is_skipped_and_the_plot_is_a_png(tmp_path):
    table = _table().append_column("arc_lens_flux_ratio", pa.nulls(16, pa.float64()))
    out = completeness_curves(scores_from_table(table), fpr_targets=(0.05, 0.1))
    assert out["skipped"]["arc_lens_flux_ratio"] == "no lens with a usable value"
    path = plot_completeness_curve(
        out["curves"]["arc_snr_sum"], out["thresholds"], tmp_path / "c.png"
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
