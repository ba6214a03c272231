"""Validation's detectable-subset metrics: evaluate's one definition on the shard table."""

from __future__ import annotations

import math

import numpy as np
import torch

from haloscope.evaluate import metrics as roc
from haloscope.shards.schema import TABLE_DTYPE
from haloscope.train.validate import compute_val_metrics, detectable_flags


def _table(label, arc_snr, theta, psf) -> np.ndarray:
    t = np.zeros(len(label), dtype=TABLE_DTYPE)
    t["label"], t["arc_snr"], t["theta_e_arcsec"], t["psfsize_r"] = label, arc_snr, theta, psf
    return t


def test_flags_follow_arc_snr_and_theta_over_psf_thresholds():
    table = _table(
        label=[1, 1, 1, 1, 0, 1],
        arc_snr=[5.0, 4.99, 20.0, np.nan, 50.0, 8.0],
        theta=[1.0, 1.0, 0.79, 1.5, 1.5, 1.2],
        psf=[1.0, 1.0, 1.0, 1.0, 1.0, 1.5],
    )
    # lens 0 on both edges; lens 1 too faint; lens 2 too small; lens 3 undefined;
    # row 4 a control (never in the subset); lens 5 theta/psf = 0.8 exactly
    assert detectable_flags(table).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_detectable_metrics_rank_the_subset_against_all_controls():
    rng = np.random.default_rng(0)
    n_neg, n_pos = 5000, 400
    labels = np.r_[np.zeros(n_neg), np.ones(n_pos)].astype(np.float32)
    det = np.r_[np.zeros(n_neg), np.ones(100), np.zeros(n_pos - 100)].astype(np.float32)
    # detectable lenses score high, the faint ones like controls
    logits = np.r_[rng.normal(0, 1, n_neg), rng.normal(4, 1, 100), rng.normal(0, 1, 300)]
    out = compute_val_metrics(
        torch.tensor(logits, dtype=torch.float32),
        torch.tensor(labels),
        detectable=torch.tensor(det),
    )
    keep = (det > 0) | (labels == 0)
    y, s = labels[keep].astype(np.int8), logits.astype(np.float32).astype(np.float64)[keep]
    assert out["val/det_num_pos"] == 100
    assert math.isclose(out["val/det_auroc"], roc.auroc(y, s))
    assert math.isclose(out["val/det_tpr@fpr1e-3"], roc.tpr_at_fpr(y, s, 1e-3).tpr)
    assert out["val/det_auroc"] > out["val/auroc"] + 0.1  # the faint lenses pull "all" down


def test_without_a_table_there_are_no_detectable_keys():
    out = compute_val_metrics(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 1.0]))
    assert not any(k.startswith("val/det_") for k in out)


def test_no_detectable_lens_leaves_the_rates_out():
    out = compute_val_metrics(
        torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 1.0]), detectable=torch.zeros(3)
    )
    assert out["val/det_num_pos"] == 0
    assert not any(k.startswith("val/det_") and k != "val/det_num_pos" for k in out)
