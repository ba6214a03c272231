"""Binomial confidence intervals (Wilson, Clopper-Pearson) and an AUROC interval.

Quantiles come from ``scipy.stats`` (beta) and ``statistics.NormalDist`` (normal):

- Wilson score interval: good coverage, never outside [0, 1]; the default.
- Clopper-Pearson ("exact"): the beta-quantile interval, conservative (coverage >= the
  nominal level). With ``k = 0`` its upper bound is ``1 - (alpha/2)^(1/n)``, the honest
  answer for "0 of n controls passed", which matters at FPR 1e-4 where a handful of
  controls decide the operating point.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from haloscope.errors import ConfigError, DataError

__all__ = [
    "CI_METHODS",
    "auroc_interval",
    "binomial_interval",
    "clopper_pearson_interval",
    "wilson_interval",
]

CI_METHODS: tuple[str, ...] = ("wilson", "clopper-pearson")


def _two_sided_z(alpha: float) -> float:
    """The standard-normal quantile of ``1 - alpha/2``."""
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def _counts(k: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    k_arr, n_arr = np.broadcast_arrays(
        np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    )
    if (n_arr < 0).any() or (k_arr < 0).any() or (k_arr > n_arr).any():
        raise DataError("binomial counts need 0 <= k <= n")
    return k_arr, n_arr


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def wilson_interval(k: Any, n: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``k`` successes in ``n`` trials (vectorised).

    Args:
        k: successes (array-like).
        n: trials (array-like, broadcastable with ``k``).
        confidence: two-sided level, e.g. 0.95.

    Returns:
        ``(low, high)`` float64 arrays; NaN where ``n == 0``.
    """
    alpha = _check_confidence(confidence)
    k, n = _counts(k, n)
    z = _two_sided_z(alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
        low = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))
        high = np.where(k == n, 1.0, np.clip(center + half, 0.0, 1.0))
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def clopper_pearson_interval(
    k: Any, n: Any, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson (exact) interval for ``k`` successes in ``n`` trials (vectorised).

    Args:
        k: successes (array-like).
        n: trials (array-like, broadcastable with ``k``).
        confidence: two-sided level, e.g. 0.95.

    Returns:
        ``(low, high)`` float64 arrays; NaN where ``n == 0``.
    """
    # NOTE: imported here, not at the top: scipy.stats takes ~2 s to import and only this
    # method needs it (Wilson's normal quantile comes from the standard library).
    from scipy import stats

    alpha = _check_confidence(confidence)
    k, n = _counts(k, n)
    low = np.zeros_like(k)
    high = np.ones_like(k)
    has_low = (k > 0) & (n > 0)
    has_high = (k < n) & (n > 0)
    if has_low.any():
        low[has_low] = stats.beta.ppf(alpha / 2.0, k[has_low], n[has_low] - k[has_low] + 1.0)
    if has_high.any():
        high[has_high] = stats.beta.ppf(
            1.0 - alpha / 2.0, k[has_high] + 1.0, n[has_high] - k[has_high]
        )
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def binomial_interval(
    k: Any, n: Any, method: str = "wilson", confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch to :func:`wilson_interval` or :func:`clopper_pearson_interval`.

    Args:
        k: successes.
        n: trials.
        method: ``"wilson"`` or ``"clopper-pearson"``.
        confidence: two-sided level.

    Returns:
        ``(low, high)`` float64 arrays.

    Raises:
        ConfigError: for an unknown method.
    """
    if method == "wilson":
        return wilson_interval(k, n, confidence)
    if method in ("clopper-pearson", "clopper_pearson"):
        return clopper_pearson_interval(k, n, confidence)
    raise ConfigError(f"--ci must be one of {', '.join(CI_METHODS)}, got {method!r}")


def auroc_interval(
    auc: float, num_pos: int, num_neg: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Normal-approximation interval for an AUROC (Hanley & McNeil 1982 standard error).

    Args:
        auc: the AUROC.
        num_pos: number of positives.
        num_neg: number of controls.
        confidence: two-sided level.

    Returns:
        ``(low, high)`` clipped to [0, 1].
    """
    alpha = _check_confidence(confidence)
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (auc * (1 - auc) + (num_pos - 1) * (q1 - auc**2) + (num_neg - 1) * (q2 - auc**2)) / (
        num_pos * num_neg
    )
    half = _two_sided_z(alpha) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)
