"""theta_E / PSF: one definition (``gates.theta_psf_ratio``) for the cut, infer and evaluate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from haloscope.evaluate import detectable, stratify
from haloscope.evaluate.scores import scores_from_table
from haloscope.infer import sources
from haloscope.preprocess import gates
from haloscope.shards.schema import TABLE_DTYPE

THETA = np.array([1.2, 0.4, 1.0, 1.0, np.nan, 2.0, np.inf, 1.0])
PSF = np.array([1.2, 0.8, 0.0, -1.0, 1.0, np.nan, 1.0, np.inf])
RATIO = np.array([1.0, 0.5, np.nan, np.nan, np.nan, np.nan, np.nan, 0.0])


def test_ratio_is_nan_where_the_psf_is_not_positive_or_the_ratio_not_finite():
    ratio = gates.theta_psf_ratio(THETA, PSF)
    assert ratio.dtype == np.float64
    np.testing.assert_array_equal(ratio, RATIO)
    f32 = gates.theta_psf_ratio(THETA.astype(np.float32), PSF.astype(np.float32))
    np.testing.assert_array_equal(f32, RATIO)


def test_every_stage_uses_the_one_ratio():
    assert stratify.theta_psf_ratio is gates.theta_psf_ratio
    assert detectable.theta_psf_ratio is gates.theta_psf_ratio
    # the cut: psf_fwhm_used_r where > 0, else psfsize_r
    batch = pa.table({"theta_e_arcsec": THETA, "psf_fwhm_used_r": PSF, "psfsize_r": np.ones(8)})
    ratio, psf = gates.theta_over_psf(batch)
    np.testing.assert_array_equal(ratio, gates.theta_psf_ratio(THETA, psf))
    # infer's theta_over_psf column (from shard table rows), float32
    rows = np.zeros(len(THETA), dtype=TABLE_DTYPE)
    rows["theta_e_arcsec"], rows["psf_fwhm_r"] = THETA, PSF
    np.testing.assert_array_equal(sources.columns_from_table(rows)["theta_over_psf"], RATIO)
    # evaluate: strata of a table without the column, and the detectable proxy (psfsize_r)
    n = len(THETA)
    frame = scores_from_table(
        pa.table(
            {
                "label": pa.array(np.ones(n), pa.int8()),
                "score": np.linspace(0, 1, n),
                "theta_e_arcsec": THETA,
                "psf_fwhm_r": PSF,
                "psfsize_r": PSF,
            }
        ),
        need_both_classes=False,
    )
    spec = stratify.StratumSpec("theta_over_psf", "res")
    np.testing.assert_array_equal(stratify.column_values(frame, spec), RATIO)
    values, reason = detectable._values(frame, "theta_over_psf")
    assert reason is None
    np.testing.assert_array_equal(values, RATIO)
