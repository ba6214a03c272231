"""ROC and operating points agree with scikit-learn on data with many ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from haloscope.errors import DataError
from haloscope.evaluate import metrics


def _tied_data(seed: int, n: int = 4000, levels: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    # few distinct values, lenses shifted up: every threshold is a big tied run of both classes
    scores = np.round(rng.random(n) * levels + labels * levels * 0.3) / levels
    return labels, scores


def _sk_tpr_at_fpr(labels, scores, target):
    fpr, tpr, thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= target)
    return tpr[ok[-1]], thr[ok[-1]]


def _sk_fpr_at_tpr(labels, scores, target):
    fpr, tpr, thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    i = np.flatnonzero(tpr >= target)[0]
    return fpr[i], thr[i]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_equals_sklearn_with_ties(seed):
    labels, scores = _tied_data(seed)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thr[0] == math.inf and np.array_equal(thr[1:], sk_thr[1:])
    assert len(thr) == len(np.unique(scores)) + 1
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("target", [1e-3, 0.01, 0.05, 0.1, 0.3])
def test_tpr_at_fpr_equals_sklearn(seed, target):
    labels, scores = _tied_data(seed)
    point = metrics.tpr_at_fpr(labels, scores, target)
    sk_tpr, sk_thr = _sk_tpr_at_fpr(labels, scores, target)
    assert point.tpr == pytest.approx(sk_tpr, abs=1e-15)
    assert point.threshold == sk_thr or (math.isinf(point.threshold) and math.isinf(sk_thr))
    # the threshold rule "score >= t" reproduces the counts
    assert point.num_tp == int(((scores >= point.threshold) & (labels == 1)).sum())
    assert point.num_fp == int(((scores >= point.threshold) & (labels == 0)).sum())
    assert point.num_fp <= point.num_allowed == math.floor(target * (labels == 0).sum())


@pytest.mark.parametrize("seed", [5, 6])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.99])
def test_fpr_at_tpr_equals_sklearn(seed, target):
    labels, scores = _tied_data(seed)
    point = metrics.fpr_at_tpr(labels, scores, target)
    sk_fpr, sk_thr = _sk_fpr_at_tpr(labels, scores, target)
    assert point.fpr == pytest.approx(sk_fpr, abs=1e-15)
    assert point.threshold == sk_thr
    assert point.num_tp >= math.ceil(target * labels.sum())


def test_ties_never_inflate_tpr():
    # 3 lenses and 1 control share the top score: at FPR 0 none of them may count
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    point = metrics.tpr_at_fpr(labels, scores, 0.0)
    assert (point.tpr, point.num_tp, point.threshold) == (0.0, 0, math.inf)
    # allowing one false positive (1/6 of controls) takes the whole tied run and the
    # lens below it, down to the next control
    point = metrics.tpr_at_fpr(labels, scores, 1 / 6)
    assert (point.num_tp, point.num_fp, point.threshold) == (4, 1, 0.5)


def test_operating_points_table_matches_single_calls():
    labels, scores = _tied_data(7)
    table = metrics.operating_points(labels, scores)
    assert [p.target for p in table["tpr@fpr"]] == list(metrics.FPR_TARGETS)
    for p in table["tpr@fpr"]:
        assert p == metrics.tpr_at_fpr(labels, scores, p.target)
    for p in table["fpr@tpr"]:
        assert p == metrics.fpr_at_tpr(labels, scores, p.target)
    # 1e-5 of ~2800 controls allows none: the lowest score above every control (TPR0)
    first = table["tpr@fpr"][0]
    assert first.num_allowed == 0 and first.num_fp == 0
    assert first.threshold == scores[scores > scores[labels == 0].max()].min()
    only_lenses = metrics.tpr_at_fpr([1, 0], [0.1, 0.9], 0.0)
    assert only_lenses.to_dict()["threshold"] is None and only_lenses.tpr == 0.0


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both positives and controls"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 .control. or 1"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 1], [0.1], "equal length"),
    ],
)
def test_bad_inputs_raise_data_error(labels, scores, match):
    with pytest.raises(DataError, match=match):
        metrics.roc_curve(labels, scores)
