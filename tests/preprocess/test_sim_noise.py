"""Noise of rendered mock stamps against the psfdepth/psfsize formula."""

from __future__ import annotations

import numpy as np
import pytest

from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.physics import (
    PIXEL_SCALE,
    mag_to_nmgy,
    moffat_fwhm_from_psfsize,
    moffat_kernels,
    sky_sigma_nmgy,
)
from haloscope.preprocess.sim.population import draw_population
from haloscope.preprocess.sim.render import render_batch


def _source_free_population(num_rows: int = 600):
    rng = np.random.default_rng(5)
    pop = draw_population(rng, SimConfig(out="unused", rows=num_rows), chunk=0, num_rows=num_rows)
    pop["lens_mag"] = np.full_like(pop["lens_mag"], 45.0)  # no lens light
    pop["is_control"][:] = True
    pop["control_kind"][:] = 0
    return rng, pop


def test_sky_sigma_on_source_free_stamps_within_5_percent():
    rng, pop = _source_free_population()
    rb = render_batch(rng, pop, with_neighbours=False)
    measured = rb.base.std(axis=(2, 3))  # (B, 3)
    expected = sky_sigma_nmgy(pop["depth_local"], pop["psf_local"])
    ratio = measured / expected
    assert np.all(np.abs(ratio - 1) < 0.05), ratio[np.abs(ratio - 1) >= 0.05]
    assert abs(ratio.mean() - 1) < 0.005  # unbiased on average
    pull = rb.base.mean(axis=(2, 3)) / (expected / 64)  # mean of 4096 pixels in units of its error
    assert np.abs(pull).max() < 5 and abs(pull.mean()) < 0.5


def test_point_source_depth_is_self_consistent():
    """A PSF-weighted flux on the rendered noise has sigma = 5-sigma flux / 5 (psfdepth)."""
    depth, psfsize = 24.2, 1.35
    kernel = moffat_kernels(
        np.array([float(moffat_fwhm_from_psfsize(psfsize)) / PIXEL_SCALE]), oversample=4
    )[0]
    nea_px = 1.0 / np.sum(kernel.astype(np.float64) ** 2)
    sigma_flux = float(sky_sigma_nmgy(np.array(depth), np.array(psfsize))) * np.sqrt(nea_px)
    assert sigma_flux == pytest.approx(float(mag_to_nmgy(depth)) / 5, rel=0.03)


def test_bright_lens_adds_shot_noise_only_where_light_is():
    rng, pop = _source_free_population(200)
    pop["lens_mag"] = np.tile([19.5, 18.0, 17.2], (len(pop["ra"]), 1))
    rb = render_batch(rng, pop, with_neighbours=False)
    edge = rb.base[:, :, :6, :].std(axis=(2, 3))
    sky = sky_sigma_nmgy(pop["depth_local"], pop["psf_local"])
    np.testing.assert_allclose(np.median(edge / sky, axis=0), 1.0, atol=0.05)
    core = rb.base[:, 1, 31:34, 31:34].mean(axis=(1, 2))
    assert np.all(core > 20 * sky[:, 1])  # the LRG core is bright and centred
