"""Wilson and Clopper-Pearson intervals against textbook values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from haloscope.errors import ConfigError
from haloscope.evaluate import intervals

# Newcombe (1998), Stat. Med. 17:857, Table I (95%): (k, n, wilson, clopper-pearson)
NEWCOMBE = [
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize("k, n, wilson, exact", NEWCOMBE)
def test_textbook_values(k, n, wilson, exact):
    lo, hi = intervals.wilson_interval(k, n)
    assert (float(lo), float(hi)) == pytest.approx(wilson, abs=6e-5)
    lo, hi = intervals.clopper_pearson_interval(k, n)
    assert (float(lo), float(hi)) == pytest.approx(exact, abs=6e-5)


def test_closed_forms_at_the_edges():
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    lo, hi = intervals.clopper_pearson_interval([0, 10], [10, 10])
    assert hi[0] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    assert lo[1] == pytest.approx(0.025 ** (1 / 10), rel=1e-10)
    assert lo[0] == 0.0 and hi[1] == 1.0


def test_vectorised_against_scipy():
    rng = np.random.default_rng(0)
    n = np.r_[rng.integers(1, 200, 30), [10**6, 10**6, 10**6, 250_000]]
    k = np.r_[[rng.integers(0, m + 1) for m in n[:30]], [0, 3, 999_999, 25]]
    for method, scipy_name in (("wilson", "wilson"), ("clopper-pearson", "exact")):
        lo, hi = intervals.binomial_interval(k, n, method=method, confidence=0.9)
        for i in range(len(n)):
            ref = stats.binomtest(int(k[i]), int(n[i])).proportion_ci(0.9, method=scipy_name)
            assert lo[i] == pytest.approx(ref.low, abs=1e-10)
            assert hi[i] == pytest.approx(ref.high, abs=1e-10)


def test_empty_trials_give_nan_and_bad_method_errors():
    lo, hi = intervals.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ConfigError, match="--ci"):
        intervals.binomial_interval(1, 2, method="bootstrap")


def test_auroc_interval_contains_auc_and_shrinks_with_n():
    small = intervals.auroc_interval(0.9, 50, 50)
    large = intervals.auroc_interval(0.9, 5000, 5000)
    assert small[0] < large[0] < 0.9 < large[1] < small[1]


@pytest.mark.parametrize("n", [10**3, 10**6, 10**9])
@pytest.mark.parametrize("confidence", [0.95, 0.999])
def test_clopper_pearson_closed_forms_to_full_precision(n, confidence):
    """k = 0, 1, n-1, n have closed forms; they must hold to 1e-12 up to n = 1e9 (a full-sky
    control set). ``binomtest(...).proportion_ci(method="exact")`` is itself off by ~1e-3 there
    (it solves for the bound numerically), so the reference here is the closed form."""
    alpha = 1.0 - confidence
    lo, hi = intervals.clopper_pearson_interval([0, 1, n - 1, n], [n] * 4, confidence)

    def root(p: float) -> float:  # 1 - p^(1/n), without cancellation
        return -math.expm1(math.log(p) / n)

    assert hi[0] == pytest.approx(root(alpha / 2), rel=1e-12, abs=0)  # 0 of n
    assert lo[1] == pytest.approx(root(1 - alpha / 2), rel=1e-12, abs=0)  # 1 of n
    assert hi[2] == pytest.approx(1 - root(1 - alpha / 2), rel=1e-12, abs=0)  # n-1 of n
    assert lo[3] == pytest.approx(1 - root(alpha / 2), rel=1e-12, abs=0)  # n of n
