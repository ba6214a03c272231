"""Mock-survey physics against independent references (lenstronomy, direct sums, science.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from haloscope.preprocess.sim.physics import (
    PIXEL_SCALE,
    convolve_stamps,
    elliptical_radius,
    moffat_fwhm_from_psfsize,
    moffat_kernels,
    pixel_grid,
    sersic_bn,
    sersic_flux_per_ie,
    sersic_shape,
    shear_deflection,
    sie_deflection,
    sky_sigma_nmgy,
)

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver  # noqa: E402
from lenstronomy.LightModel.light_model import LightModel  # noqa: E402

# (theta_E, q, phi, gamma1, gamma2)
CONFIGS = [
    (1.2, 0.7, 0.3, 0.0, 0.0),
    (0.6, 0.45, -1.1, 0.03, -0.05),
    (2.4, 0.95, 2.0, -0.06, 0.02),
    (1.0, 0.999, 0.0, 0.08, 0.0),
]


def _e1e2(q: float, phi: float) -> tuple[float, float]:
    e = (1 - q) / (1 + q)
    return e * math.cos(2 * phi), e * math.sin(2 * phi)


def _kwargs(theta_e, q, phi, g1, g2):
    e1, e2 = _e1e2(q, phi)
    return [
        {"theta_E": theta_e, "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
        {"gamma1": g1, "gamma2": g2, "ra_0": 0.0, "dec_0": 0.0},
    ]


def _ray_shoot(x, y, theta_e, q, phi, g1, g2):
    ax, ay = sie_deflection(x, y, np.float64(theta_e), np.float64(q), np.float64(phi))
    gx, gy = shear_deflection(x, y, g1, g2)
    return x - ax - gx, y - ay - gy


@pytest.mark.parametrize("config", CONFIGS)
def test_sie_shear_deflection_matches_lenstronomy(config):
    grid = np.linspace(-4.0, 4.0, 41) + 0.013  # avoid the exact centre
    x, y = np.meshgrid(grid, grid)
    bx, by = _ray_shoot(x, y, *config)
    ref_x, ref_y = LensModel(["SIE", "SHEAR"]).ray_shooting(x, y, _kwargs(*config))
    np.testing.assert_allclose(bx, ref_x, atol=2e-6 * config[0])
    np.testing.assert_allclose(by, ref_y, atol=2e-6 * config[0])


@pytest.mark.parametrize("config", CONFIGS)
def test_lensed_extended_source_matches_lenstronomy(config):
    grid = pixel_grid(40, 2, center_px=20)
    x, y = np.meshgrid(grid, grid)
    src = {"R_sersic": 0.25, "n_sersic": 1.2, "q": 0.6, "phi": 0.7, "cx": 0.15, "cy": -0.2}
    bx, by = _ray_shoot(x, y, *config)
    n = src["n_sersic"]
    ours = sersic_shape(
        elliptical_radius(bx - src["cx"], by - src["cy"], src["q"], src["phi"]),
        src["R_sersic"],
        n,
        1.9992 * n - 0.3271,  # lenstronomy's b_n approximation
    )
    rx, ry = LensModel(["SIE", "SHEAR"]).ray_shooting(x, y, _kwargs(*config))
    e1, e2 = _e1e2(src["q"], src["phi"])
    ref = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(
        rx,
        ry,
        [
            {
                "amp": 1.0,
                "R_sersic": src["R_sersic"],
                "n_sersic": n,
                "e1": e1,
                "e2": e2,
                "center_x": src["cx"],
                "center_y": src["cy"],
            }
        ],
    )
    assert ours.max() > 1.0  # the source is actually lensed into the box
    np.testing.assert_allclose(ours, ref.reshape(ours.shape), rtol=2e-5, atol=1e-9)


@pytest.mark.parametrize("config", CONFIGS[:3])
def test_point_source_images_and_magnification_match_lenstronomy(config):
    lens = LensModel(["SIE", "SHEAR"])
    kw = _kwargs(*config)
    beta = (0.1 * config[0], -0.05 * config[0])
    xs, ys = LensEquationSolver(lens).image_position_from_source(
        beta[0],
        beta[1],
        kw,
        min_distance=0.01,
        search_window=4 * config[0] + 2,
        precision_limit=1e-10,
    )
    assert len(xs) >= 2  # multiply imaged
    bx, by = _ray_shoot(np.asarray(xs), np.asarray(ys), *config)
    np.testing.assert_allclose(bx, beta[0], atol=1e-6)
    np.testing.assert_allclose(by, beta[1], atol=1e-6)
    h = 1e-6
    dxx, dyx = [
        (a - b) / (2 * h)
        for a, b in zip(
            _ray_shoot(xs + h, ys, *config), _ray_shoot(xs - h, ys, *config), strict=False
        )
    ]
    dxy, dyy = [
        (a - b) / (2 * h)
        for a, b in zip(
            _ray_shoot(xs, ys + h, *config), _ray_shoot(xs, ys - h, *config), strict=False
        )
    ]
    mu = 1.0 / (dxx * dyy - dxy * dyx)
    np.testing.assert_allclose(mu, lens.magnification(xs, ys, kw), rtol=1e-4)


@pytest.mark.parametrize("n", [0.5, 1.0, 4.0, 6.0])
def test_sersic_normalisation_integrates_to_total_flux(n):
    re = np.array(0.7)
    bn = sersic_bn(np.array(n))
    radius = np.geomspace(1e-7, 5e3, 400_001)
    prof = sersic_shape(radius, re, np.array(n), bn)
    radial = np.trapezoid(2 * np.pi * radius * prof, radius)
    assert radial == pytest.approx(float(sersic_flux_per_ie(re, np.array(n), bn)), rel=2e-3)
    half = radius <= re
    inner = np.trapezoid(2 * np.pi * radius[half] * prof[half], radius[half])
    assert inner / radial == pytest.approx(0.5, abs=2e-3)  # R_e is the half-light radius


def test_sersic_flux_independent_of_axis_ratio():
    n, re = np.array(1.0), np.array(1.0)
    bn = sersic_bn(n)
    step = 0.01
    grid = np.arange(-15, 15, step) + step / 2
    x, y = np.meshgrid(grid, grid)
    total = sersic_shape(elliptical_radius(x, y, 0.45, 0.4), re, n, bn).sum() * step**2
    assert total == pytest.approx(float(sersic_flux_per_ie(re, n, bn)), rel=0.01)


@pytest.mark.parametrize("fwhm_px", [4.0, 6.0, 10.0])
def test_moffat_kernel_normalised_and_fwhm(fwhm_px):
    point = moffat_kernels(np.array([fwhm_px]), oversample=1)[0]  # sampled at pixel centres
    c = point.shape[0] // 2
    assert point.shape[0] <= 64 and point.shape[0] % 2 == 1
    assert np.unravel_index(np.argmax(point), point.shape) == (c, c)  # centred, no shift
    assert point[c, c + int(fwhm_px / 2)] / point[c, c] == pytest.approx(0.5, rel=1e-4)
    integrated = moffat_kernels(np.array([fwhm_px]), oversample=8)[0]
    assert integrated.sum() == pytest.approx(1.0, abs=1e-5)
    assert integrated.dtype == np.float32


def test_moffat_fwhm_from_psfsize_preserves_noise_equivalent_area():
    psfsize = 1.3
    fwhm = float(moffat_fwhm_from_psfsize(psfsize))
    assert psfsize / fwhm == pytest.approx(1.2325, abs=2e-4)  # science.md 2.3
    k = moffat_kernels(np.array([fwhm / PIXEL_SCALE]), oversample=4)[0].astype(np.float64)
    nea_px = 1.0 / np.sum(k**2)
    recovered = 2.3548 * math.sqrt(nea_px / (4 * math.pi)) * PIXEL_SCALE
    assert recovered == pytest.approx(psfsize, rel=0.03)


def test_kernel_wider_than_stamp_is_refused():
    with pytest.raises(ValueError, match="<= 64"):
        moffat_kernels(np.array([3.0]), size=65)


def test_convolution_is_linear_centred_and_matches_direct_sum():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((64, 64)).astype(np.float32)
    ker = moffat_kernels(np.array([4.0]))[0]
    ours = convolve_stamps(img[None], ker[None])[0]
    c = ker.shape[0] // 2
    padded = np.pad(img.astype(np.float64), c)
    direct = np.zeros((64, 64))
    for dy in range(ker.shape[0]):
        for dx in range(ker.shape[1]):
            direct += (
                ker[ker.shape[0] - 1 - dy, ker.shape[1] - 1 - dx]
                * padded[dy : dy + 64, dx : dx + 64]
            )
    np.testing.assert_allclose(ours, direct, atol=2e-5)
    delta = np.zeros((1, 64, 64), np.float32)
    delta[0, 5, 60] = 1.0  # near an edge: no wrap-around onto the far side
    out = convolve_stamps(delta, ker[None])[0]
    assert np.unravel_index(np.argmax(out), out.shape) == (5, 60)
    assert np.abs(out[40:, :20]).max() < 1e-6


def test_sky_sigma_formula_matches_science_table():
    # reference/science.md section 2.4 worked examples (g, r, z)
    sig = sky_sigma_nmgy(np.array([24.8, 24.2, 23.3]), np.array([1.50, 1.35, 1.30]))
    np.testing.assert_allclose(sig, [0.0028, 0.0054, 0.0128], rtol=0.04)
