"""Pure numpy ROC and operating-point metrics with exact tie handling.

This module is the one exception to the one-way dependency rule: the trainer's early
stopping imports it, so it imports nothing heavier than numpy (no matplotlib, no pyarrow).

Conventions (the same everywhere in haloscope):

- ``labels``: 1 = lens (positive), 0 = control (negative).
- A sample is called positive at threshold ``t`` when ``score >= t``. Thresholds are the
  distinct score values, so a threshold always takes a whole run of tied scores or none
  of it: ties can never inflate TPR (the seed's bug B4 kept the first element of a tied run,
  counting only some of the tied samples).
- ``roc_curve`` returns one point per distinct score, starting at (0, 0) with threshold
  ``+inf`` (nothing passes), like ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
- ``tpr_at_fpr(f)``: the highest TPR among ROC points with ``num_fp <= floor(f * N)``
  (no interpolation). ``fpr_at_tpr(t)``: the lowest FPR among points with
  ``num_tp >= ceil(t * P)``. Counts are compared as integers so that float rounding of
  ``f * N`` cannot move an operating point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from haloscope.errors import DataError

__all__ = [
    "FPR_TARGETS",
    "TPR_TARGETS",
    "OperatingPoint",
    "auroc",
    "check_binary_inputs",
    "fpr_at_tpr",
    "operating_points",
    "roc_counts",
    "roc_curve",
    "tpr_at_fpr",
]

FPR_TARGETS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Default FPR operating points (the seed's ``--fpr_targets``)."""
TPR_TARGETS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
"""Default TPR operating points (the seed's ``--tpr_targets``)."""

# Relative slack when turning a rate target into an integer count, so that e.g.
# 0.29 * 100 = 28.999999999999996 still allows 29.
_COUNT_EPS = 1e-9


@dataclass(frozen=True)
class OperatingPoint:
    """One point of the ROC chosen for a target rate.

    Attributes:
        kind: ``"tpr@fpr"`` or ``"fpr@tpr"``.
        target: the target rate (an FPR for ``tpr@fpr``, a TPR for ``fpr@tpr``).
        tpr: true-positive rate at the point, ``num_tp / num_pos``.
        fpr: false-positive rate at the point, ``num_fp / num_neg``.
        threshold: score threshold; a sample passes when ``score >= threshold``
            (``inf``: nothing passes).
        num_tp: positives passing.
        num_fp: controls passing.
        num_pos: positives in total.
        num_neg: controls in total.
        num_allowed: ``floor(target * num_neg)`` false positives allowed (tpr@fpr) or
            ``ceil(target * num_pos)`` true positives required (fpr@tpr).

    Every target can be met: tpr@fpr falls back to the origin (0, 0) and fpr@tpr to the
    last point (1, 1). A tpr@fpr target below ``1 / num_neg`` has ``num_allowed == 0``:
    it is the TPR before the first false positive (Metcalf's TPR0).
    """

    kind: str
    target: float
    tpr: float
    fpr: float
    threshold: float
    num_tp: int
    num_fp: int
    num_pos: int
    num_neg: int
    num_allowed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (``inf`` thresholds become ``None`` for JSON)."""
        out = asdict(self)
        if not math.isfinite(out["threshold"]):
            out["threshold"] = None
        return out


def check_binary_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``labels`` (0/1) and ``scores`` (finite) to numpy arrays.

    Args:
        labels: array-like of 0/1 (1 = lens).
        scores: array-like of finite floats, same length.

    Returns:
        ``(labels int8 (N,), scores float64 (N,))``.

    Raises:
        DataError: on shape mismatch, labels other than 0/1, non-finite scores, or a
            single class (ROC needs both positives and controls).
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise DataError(
            f"labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}"
        )
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise DataError(f"labels must be 0 (control) or 1 (lens); found {bad.tolist()}")
    if not np.isfinite(s).all():
        raise DataError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
    y = y.astype(np.int8)
    num_pos = int(y.sum())
    if num_pos == 0 or num_pos == y.size:
        raise DataError(
            f"need both positives and controls, got {num_pos} positives and "
            f"{y.size - num_pos} controls"
        )
    return y, s


def roc_counts(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative counts at every distinct threshold, from the highest score down.

    Args:
        labels: 0/1 labels (1 = lens).
        scores: finite scores (higher = more lens-like).

    Returns:
        ``(num_fp, num_tp, thresholds)``, each of length ``D + 1`` for ``D`` distinct
        scores: entry 0 is ``(0, 0, +inf)``; entry ``i`` counts samples with
        ``score >= thresholds[i]``. Thresholds are strictly decreasing.
    """
    y, s = check_binary_inputs(labels, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores: the whole tied run passes together
    run_end = np.flatnonzero(np.diff(s_sorted) != 0)
    run_end = np.r_[run_end, s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[run_end]
    fps = (run_end + 1) - tps
    return (
        np.r_[0, fps].astype(np.int64),
        np.r_[0, tps].astype(np.int64),
        np.r_[np.inf, s_sorted[run_end]],
    )


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve: one point per distinct score, starting at (0, 0).

    Args:
        labels: 0/1 labels (1 = lens).
        scores: finite scores.

    Returns:
        ``(fpr, tpr, thresholds)`` as float64 arrays; ``thresholds[0] = inf``.
    """
    fps, tps, thresholds = roc_counts(labels, scores)
    return fps / fps[-1], tps / tps[-1], thresholds


def auroc(labels: Any, scores: Any) -> float:
    """Area under the exact ROC curve (trapezoid rule; a tie counts one half).

    Args:
        labels: 0/1 labels (1 = lens).
        scores: finite scores.

    Returns:
        AUROC in [0, 1], equal to the Mann-Whitney U statistic / (P * N).
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _point_at(
    kind: str,
    target: float,
    i: int,
    fps: np.ndarray,
    tps: np.ndarray,
    thresholds: np.ndarray,
    num_allowed: int,
) -> OperatingPoint:
    """The operating point at ROC index ``i`` (counts from :func:`roc_counts`)."""
    num_pos, num_neg = int(tps[-1]), int(fps[-1])
    return OperatingPoint(
        kind=kind,
        target=float(target),
        tpr=tps[i] / num_pos,
        fpr=fps[i] / num_neg,
        threshold=float(thresholds[i]),
        num_tp=int(tps[i]),
        num_fp=int(fps[i]),
        num_pos=num_pos,
        num_neg=num_neg,
        num_allowed=num_allowed,
    )


def _tpr_at_fpr_from_counts(
    fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray, target: float
) -> OperatingPoint:
    allowed = int(math.floor(target * int(fps[-1]) * (1 + _COUNT_EPS)))
    # fps is non-decreasing: the last point with fps <= allowed has the highest TPR
    i = int(np.searchsorted(fps, allowed, side="right")) - 1
    return _point_at("tpr@fpr", target, i, fps, tps, thresholds, allowed)


def _fpr_at_tpr_from_counts(
    fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray, target: float
) -> OperatingPoint:
    required = int(math.ceil(target * int(tps[-1]) * (1 - _COUNT_EPS)))
    # tps is non-decreasing: the first point with tps >= required has the lowest FPR
    i = int(np.searchsorted(tps, required, side="left"))
    return _point_at("fpr@tpr", target, i, fps, tps, thresholds, required)


def _check_rate(target: float, name: str) -> None:
    if not (0.0 <= target <= 1.0) or math.isnan(target):
        raise DataError(f"{name} target must be in [0, 1], got {target}")


def tpr_at_fpr(labels: Any, scores: Any, fpr: float) -> OperatingPoint:
    """Highest TPR whose FPR does not exceed ``fpr`` (thresholds from all controls).

    Args:
        labels: 0/1 labels (1 = lens).
        scores: finite scores.
        fpr: target false-positive rate in [0, 1].

    Returns:
        The :class:`OperatingPoint` (``.tpr``, ``.threshold``, ``.num_allowed`` = the
        number of false positives allowed, ``floor(fpr * N)``).
    """
    _check_rate(fpr, "FPR")
    return _tpr_at_fpr_from_counts(*roc_counts(labels, scores), fpr)


def fpr_at_tpr(labels: Any, scores: Any, tpr: float) -> OperatingPoint:
    """Lowest FPR at which at least ``ceil(tpr * P)`` positives pass.

    Args:
        labels: 0/1 labels (1 = lens).
        scores: finite scores.
        tpr: target true-positive rate in [0, 1].

    Returns:
        The :class:`OperatingPoint` (``.fpr``, ``.threshold``, ``.num_allowed`` = the
        number of true positives required).
    """
    _check_rate(tpr, "TPR")
    return _fpr_at_tpr_from_counts(*roc_counts(labels, scores), tpr)


def operating_points(
    labels: Any,
    scores: Any,
    fpr_targets: tuple[float, ...] = FPR_TARGETS,
    tpr_targets: tuple[float, ...] = TPR_TARGETS,
) -> dict[str, list[OperatingPoint]]:
    """All operating points from one sort of the data.

    Args:
        labels: 0/1 labels (1 = lens).
        scores: finite scores.
        fpr_targets: FPR targets for ``tpr@fpr``.
        tpr_targets: TPR targets for ``fpr@tpr``.

    Returns:
        ``{"tpr@fpr": [...], "fpr@tpr": [...]}`` in the order of the targets.
    """
    for t in fpr_targets:
        _check_rate(t, "FPR")
    for t in tpr_targets:
        _check_rate(t, "TPR")
    counts = roc_counts(labels, scores)
    return {
        "tpr@fpr": [_tpr_at_fpr_from_counts(*counts, t) for t in fpr_targets],
        "fpr@tpr": [_fpr_at_tpr_from_counts(*counts, t) for t in tpr_targets],
    }
