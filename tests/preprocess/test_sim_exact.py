"""The simulator's fast paths give the same bits as the plain numpy formulas they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft as sp_fft

from haloscope.preprocess.sim import field as sim_field
from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.physics import (
    bin_image,
    convolve_full,
    convolve_stamps,
    kernel_spectra,
    moffat_kernels,
    pixel_grid,
    sie_deflection,
)
from haloscope.preprocess.sim.population import draw_population
from haloscope.preprocess.sim.render import _c, _knot_light
from haloscope.preprocess.sim.sources import MAX_KNOTS


def _moffat_reference(fwhm_px: np.ndarray, beta: float = 3.5, size: int = 33) -> np.ndarray:
    """Kernels from the whole mirrored 2x sub-sampled profile, block-summed by numpy."""
    alpha = np.asarray(fwhm_px, np.float32) / np.float32(2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1))
    sub = np.array([-0.25, 0.25], np.float32)
    axis = (np.arange(size, dtype=np.float32)[:, None] - size // 2 + sub[None, :]).reshape(-1)
    half = axis[size:]
    r2 = half[:, None] ** 2 + half[None, :] ** 2
    quad = np.exp(np.float32(-beta) * np.log1p(r2[None] * (1.0 / alpha**2)[:, None, None]))
    top = np.concatenate([quad[:, ::-1], quad], axis=1)
    prof = np.concatenate([top[:, :, ::-1], top], axis=2)
    k = prof.reshape(-1, size, 2, size, 2).sum(axis=(2, 4))
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def _sie_reference(x, y, theta_e, q, phi):
    q64 = np.minimum(np.asarray(q, dtype=np.float64), 1.0 - 1e-6)
    root = np.sqrt((1.0 - q64) * (1.0 + q64)).astype(x.dtype)
    b = (np.asarray(theta_e, np.float64) * np.sqrt(q64)).astype(x.dtype)
    qd = q64.astype(x.dtype)
    c, s = np.cos(phi).astype(x.dtype), np.sin(phi).astype(x.dtype)
    xr, yr = c * x + s * y, -s * x + c * y
    psi = np.maximum(np.sqrt(qd * qd * xr * xr + yr * yr), np.asarray(1e-9, dtype=x.dtype))
    ax_r = b / root * np.arctan(root * xr / psi)
    ay_r = b / root * np.arctanh(np.clip(root * yr / psi, -0.9999999, 0.9999999))
    return c * ax_r - s * ay_r, s * ax_r + c * ay_r


def test_bin_image_2x2_is_numpys_block_mean():
    rng = np.random.default_rng(0)
    fine = (
        rng.standard_normal((7, 3, 40, 40)) * 10.0 ** rng.uniform(-4, 4, (7, 3, 40, 40))
    ).astype(np.float32)
    fine[0, 0, :2, :2] = -0.0
    fine[1, 1, 4, 4] = np.nan
    expected = fine.reshape(7, 3, 20, 2, 20, 2).mean(axis=(-3, -1))
    assert bin_image(fine, 2).tobytes() == expected.tobytes()


def test_moffat_kernels_equal_the_block_sums_of_the_mirrored_profile():
    fwhm = np.random.default_rng(1).uniform(2.5, 12.0, 500)
    np.testing.assert_array_equal(moffat_kernels(fwhm), _moffat_reference(fwhm))


def test_convolutions_equal_scipys_rfft2_and_irfft2():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((5, 3, 64, 64)).astype(np.float32)
    kernels = moffat_kernels(rng.uniform(3.0, 9.0, 15)).reshape(5, 3, 33, 33)
    full = sp_fft.irfft2(sp_fft.rfft2(images, s=(96, 96)) * sp_fft.rfft2(kernels, s=(96, 96)))
    expected = np.ascontiguousarray(full[..., 16:80, 16:80], dtype=np.float32)
    assert convolve_stamps(images, kernels).tobytes() == expected.tobytes()
    box = images[..., :24, :24].copy()
    spectra = kernel_spectra(kernels, 24)
    n = spectra.shape[-2]
    full = sp_fft.irfft2(sp_fft.rfft2(box, s=(n, n)) * sp_fft.rfft2(kernels, s=(n, n)), s=(n, n))
    expected = np.ascontiguousarray(full[..., :56, :56], dtype=np.float32)
    assert convolve_full(box, spectra, 33).tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sie_deflection_in_place_equals_the_formula(dtype):
    rng = np.random.default_rng(3)
    g = pixel_grid(24, 2, center_px=12).astype(dtype)
    col = lambda a: a[:, None, None]  # noqa: E731
    cases = [
        (g[None, None, :], g[None, :, None], col(rng.uniform(0.5, 2.5, 6)), col(rng.uniform(0.4, 1, 6)), col(rng.uniform(0, 3, 6))),
        (g[None, None, :], g[None, :, None], col(rng.uniform(0.5, 2.5, 4)), 0.7, 0.4),
        (rng.standard_normal((2, 9)).astype(dtype), rng.standard_normal((2, 9)).astype(dtype), 1.0, rng.uniform(0.4, 1, 9), 0.3),
        (np.asarray(0.3, dtype), np.asarray(-0.2, dtype), 1.1, 0.8, 0.1),
    ]  # fmt: skip
    for case in cases:
        got, expected = sie_deflection(*case), _sie_reference(*case)
        for a, b in zip(got, expected, strict=True):
            assert np.shape(a) == np.shape(b) and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_field_galaxies_equal_the_bincount_of_their_boxes():
    rng = np.random.default_rng(4)
    num = 12
    stamp = np.repeat(np.arange(num), rng.poisson(8, num))
    gals = sim_field.draw_field_galaxies(rng, len(stamp))
    x, y = rng.uniform(-12.0, 12.0, (2, len(stamp)))
    got = sim_field.render_galaxies(gals, x, y, stamp, num)
    size = num * 64 * 64
    ix, iy = np.rint(x / 0.262).astype(np.int64), np.rint(y / 0.262).astype(np.int64)
    dx, dy = x - ix * 0.262, y - iy * 0.262
    flux = sim_field._band_fluxes(gals.mag_r, gals.g_r, gals.r_z).astype(np.float32)
    flats, weights = [], []
    for cls, box in enumerate((16, 32, 64)):
        sel = np.flatnonzero(np.digitize(gals.reff_arcsec, (0.5, 1.0)) == cls)
        unit = sim_field._box_unit_maps(gals, sel, dx, dy, box)
        off = np.arange(box) - box // 2
        py, px = (iy[sel] + 32)[:, None] + off, (ix[sel] + 32)[:, None] + off
        inside = ((py >= 0) & (py < 64))[:, :, None] & ((px >= 0) & (px < 64))[:, None]
        py, px = np.clip(py, 0, 63), np.clip(px, 0, 63)
        flat = (stamp[sel][:, None, None] * 64 + py[:, :, None]) * 64 + px[:, None]
        weights.append(((unit * inside)[None] * flux[sel].T[:, :, None, None]).ravel())
        flats.append((flat[None] + (np.arange(3) * size)[:, None, None, None]).ravel())
    summed = np.bincount(
        np.concatenate(flats), np.concatenate(weights).astype(np.float64), 3 * size
    )
    expected = summed.reshape(3, num, 64, 64).transpose(1, 0, 2, 3).astype(np.float32)
    assert got.tobytes() == expected.tobytes()


def test_clumps_of_zero_weight_are_skipped_exactly():
    pop = draw_population(np.random.default_rng(5), SimConfig(out="unused", rows=600), 0, 600)
    idx = np.flatnonzero(~pop["is_control"])[:20]
    assert (pop["knot_w"][idx] == 0).any()
    g = pixel_grid(16, 2, center_px=8).astype(np.float32)
    bx, by = (
        g[None, None, :] - _c(pop["src_x"][idx, 0]),
        g[None, :, None] - _c(pop["src_y"][idx, 0]),
    )
    bx, by = np.broadcast_arrays(bx, by)
    bx, by = bx.copy(), by.copy()
    phi = pop["src_phi"][idx, 0]
    expected = np.zeros_like(bx)
    for k in range(MAX_KNOTS):
        dx, dy = pop["knot_dx"][idx, k], pop["knot_dy"][idx, k]
        kx = np.cos(phi) * dx - np.sin(phi) * dy
        ky = np.sin(phi) * dx + np.cos(phi) * dy
        sig2 = pop["knot_sigma"][idx, k] ** 2
        d2 = (bx - _c(kx)) ** 2 + (by - _c(ky)) ** 2
        amp = _c(pop["knot_w"][idx, k] / (2 * np.pi * sig2))
        expected += amp * np.exp(d2 * _c(-0.5 / sig2))
    assert _knot_light(pop, idx, phi, bx, by).tobytes() == expected.tobytes()
