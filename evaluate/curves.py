"""Completeness curves: the share of lenses passing the FPR 1e-4 and 1e-3 thresholds (set on
all controls) against integrated arc SNR, theta_E/PSF and the arc/lens flux ratio.

Bins are fixed by the data's range on a fixed grid, so two models scored on the same rows
share them: quarter decades for the log-binned columns (``arc_snr_sum``,
``arc_lens_flux_ratio``; values <= 0 cannot be placed and are counted as ``num_outside``),
steps of 0.2 for theta_E/PSF with everything above 3 in one open last bin. Each point sits at
the median of its bin's values and carries a binomial interval. theta_E/PSF is the strata's
(:func:`haloscope.evaluate.stratify.column_values`, ``psf_fwhm_r`` first), not the detectable
subset's ``theta_E/psfsize_r``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from haloscope.evaluate.intervals import binomial_interval
from haloscope.evaluate.metrics import tpr_at_fpr
from haloscope.evaluate.scores import ScoresFrame
from haloscope.evaluate.stratify import StratumSpec, column_values

__all__ = ["CURVE_COLUMNS", "CURVE_FPRS", "completeness_curves"]

CURVE_FPRS: tuple[float, ...] = (1e-4, 1e-3)
# (column, axis label, "log" | "linear")
CURVE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("arc_snr_sum", "integrated arc SNR (arc_snr_sum)", "log"),
    ("theta_over_psf", "theta_E / PSF FWHM", "linear"),
    ("arc_lens_flux_ratio", "arc / lens flux ratio", "log"),
)
LINEAR_STEP, LINEAR_MAX = 0.2, 3.0


def _edges(values: np.ndarray, scale: str) -> np.ndarray:
    if scale == "log":
        lo, hi = np.log10(values.min()), np.log10(values.max())
        return 10.0 ** (np.arange(math.floor(4 * lo), math.floor(4 * hi) + 2) / 4)
    top = min(math.floor(values.max() / LINEAR_STEP) + 1, round(LINEAR_MAX / LINEAR_STEP))
    edges = np.arange(top + 1) * LINEAR_STEP
    return np.append(edges, math.inf) if values.max() >= edges[-1] else edges


def _curve(
    values: np.ndarray, passed: dict[float, np.ndarray], scale: str, method: str, confidence: float
) -> dict[str, Any]:
    usable = np.isfinite(values) & ((values > 0) if scale == "log" else (values >= 0))
    v = values[usable]
    edges = _edges(v, scale)
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    bins = [b for b in range(len(edges) - 1) if (which == b).any()]
    curve: dict[str, Any] = {
        "scale": scale,
        "lo": [float(edges[b]) for b in bins],
        "hi": [float(edges[b + 1]) for b in bins],
        "x": [float(np.median(v[which == b])) for b in bins],
        "n": [int((which == b).sum()) for b in bins],
        "num_outside": int((~usable & np.isfinite(values)).sum()),
        "fpr": {},
    }
    for fpr, ok in passed.items():
        k = [int(ok[usable][which == b].sum()) for b in bins]
        lo, hi = binomial_interval(k, curve["n"], method, confidence)
        curve["fpr"][f"{fpr:g}"] = {
            "k": k,
            "value": [a / b for a, b in zip(k, curve["n"], strict=True)],
            "ci_low": lo.tolist(),
            "ci_high": hi.tolist(),
        }
    return curve


def completeness_curves(
    frame: ScoresFrame,
    fpr_targets: tuple[float, ...] = CURVE_FPRS,
    method: str = "wilson",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Completeness per bin of each of ``CURVE_COLUMNS`` at thresholds from all controls.

    Args:
        frame: validated scores.
        fpr_targets: the FPR operating points whose thresholds are drawn.
        method: binomial interval, ``wilson`` or ``clopper-pearson``.
        confidence: two-sided level.

    Returns:
        ``{"thresholds": {fpr: score threshold}, "curves": {column: {label, scale, lo, hi, x,
        n, num_outside, fpr: {fpr: {k, value, ci_low, ci_high}}}}, "skipped": {column:
        reason}}``; a column absent, not numeric or null for every lens is skipped.
    """
    lenses = frame.labels == 1
    thresholds = {f: tpr_at_fpr(frame.labels, frame.ranking, f).threshold for f in fpr_targets}
    passed = {f: frame.ranking[lenses] >= t for f, t in thresholds.items()}
    out: dict[str, Any] = {
        "thresholds": {f"{f:g}": frame.to_score(t) for f, t in thresholds.items()},
        "curves": {},
        "skipped": {},
    }
    for column, label, scale in CURVE_COLUMNS:
        values = column_values(frame, StratumSpec(column, column))
        if values is None or values.dtype == object:
            out["skipped"][column] = "column absent" if values is None else "not numeric"
            continue
        values = values[lenses].astype(np.float64)
        ok = np.isfinite(values) & ((values > 0) if scale == "log" else (values >= 0))
        if not ok.any():
            out["skipped"][column] = "no lens with a usable value"
            continue
        out["curves"][column] = {"label": label} | _curve(values, passed, scale, method, confidence)
    return out
