"""Binomial confidence intervals (Wilson, Clopper-Pearson) and an AUROC interval, in numpy.

scipy is not a runtime dependency, so the normal quantile and the regularised incomplete
beta function are implemented here (tests check them against ``scipy.stats``).

- Wilson score interval: good coverage, never outside [0, 1]; the default.
- Clopper-Pearson ("exact"): the beta-quantile interval, conservative (coverage >= the
  nominal level). With ``k = 0`` its upper bound is ``1 - (alpha/2)^(1/n)``, the honest
  answer for "0 of n controls passed", which matters at FPR 1e-4 where a handful of
  controls decide the operating point.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from haloscope.errors import ConfigError, DataError

__all__ = [
    "CI_METHODS",
    "auroc_interval",
    "beta_ppf",
    "betainc",
    "binomial_interval",
    "clopper_pearson_interval",
    "normal_ppf",
    "wilson_interval",
]

CI_METHODS: tuple[str, ...] = ("wilson", "clopper-pearson")


def normal_ppf(p: float) -> float:
    """Quantile of the standard normal distribution (bisection on ``math.erfc``).

    Args:
        p: probability in (0, 1).

    Returns:
        ``x`` with ``Phi(x) = p`` to ~1e-15.
    """
    if not 0.0 < p < 1.0:
        raise ConfigError(f"normal quantile needs 0 < p < 1, got {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


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
    z = normal_ppf(1.0 - alpha / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
        low = np.where(k == 0, 0.0, np.clip(center - half, 0.0, 1.0))
        high = np.where(k == n, 1.0, np.clip(center + half, 0.0, 1.0))
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def betainc(a: Any, b: Any, x: Any, max_iter: int = 100_000) -> np.ndarray:
    """Regularised incomplete beta function ``I_x(a, b)`` (vectorised continued fraction).

    Lentz's method on the continued fraction of Numerical Recipes ``betacf``, using the
    symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where it converges faster.

    Args:
        a: shape parameter > 0.
        b: shape parameter > 0.
        x: point in [0, 1].
        max_iter: iteration cap (convergence needs ~sqrt(max(a, b)) iterations).

    Returns:
        ``I_x(a, b)`` as a float64 array.
    """
    a, b, x = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, b, x))
    flip = x > (a + 1.0) / (a + b + 2.0)
    aa, bb, xx = np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1.0 - x, x)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_front = (
            aa * np.log(xx) + bb * np.log1p(-xx) - (lgamma(aa) + lgamma(bb) - lgamma(aa + bb))
        )
        value = np.exp(log_front) * _betacf(aa, bb, xx, max_iter) / aa
    value = np.where(xx <= 0.0, 0.0, np.where(xx >= 1.0, 1.0, value))
    return np.where(flip, 1.0 - value, value)


def _betacf(a: np.ndarray, b: np.ndarray, x: np.ndarray, max_iter: int) -> np.ndarray:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    done = np.zeros(x.shape, dtype=bool)
    for m in range(1, max_iter + 1):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):  # fmt: skip
            d = 1.0 + num * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + num / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = d * c
            h = np.where(done, h, h * delta)
        done |= np.abs(delta - 1.0) < eps
        if done.all():
            break
    return h


def beta_ppf(q: Any, a: Any, b: Any, max_iter: int = 200) -> np.ndarray:
    """Quantile of the Beta(a, b) distribution: Newton steps on :func:`betainc`,
    safeguarded by a bisection bracket.

    Args:
        q: probability in [0, 1].
        a: shape parameter > 0.
        b: shape parameter > 0.
        max_iter: iteration cap.

    Returns:
        ``x`` with ``I_x(a, b) = q``, to ~1e-15 relative.
    """
    q, a, b = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(q, a, b))
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    log_beta = lgamma(a) + lgamma(b) - lgamma(a + b)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    x = a / (a + b)
    for _ in range(max_iter):
        f = betainc(a, b, x) - q
        lo, hi = np.where(f < 0, x, lo), np.where(f >= 0, x, hi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            pdf = np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - log_beta)
            new = x - f / pdf
        outside = ~((new > lo) & (new < hi))  # also catches NaN
        new = np.where(outside, 0.5 * (lo + hi), new)
        done = (np.abs(new - x) <= 1e-15 * np.abs(x)) | (hi - lo <= 1e-300)
        x = new
        if done.all():
            break
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, x))


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
    alpha = _check_confidence(confidence)
    k, n = _counts(k, n)
    low = np.zeros_like(k)
    high = np.ones_like(k)
    has_low = (k > 0) & (n > 0)
    has_high = (k < n) & (n > 0)
    if has_low.any():
        low[has_low] = beta_ppf(alpha / 2.0, k[has_low], n[has_low] - k[has_low] + 1.0)
    if has_high.any():
        high[has_high] = beta_ppf(1.0 - alpha / 2.0, k[has_high] + 1.0, n[has_high] - k[has_high])
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
    half = normal_ppf(1.0 - alpha / 2.0) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)
