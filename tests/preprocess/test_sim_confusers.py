"""Confusers and field neighbours: drawn from the real sky's populations, not the lens recipe."""

from __future__ import annotations

import numpy as np
import pytest

from haloscope.preprocess.sim import field as sim_field
from haloscope.preprocess.sim.confusers import RENDERERS, added_flux_bounds, render_confusers
from haloscope.preprocess.sim.physics import STAMP_PX, mag_to_nmgy, pixel_grid

_AX = pixel_grid(STAMP_PX, 1)
_X, _Y = np.meshgrid(_AX, _AX)
_R, _THETA = np.hypot(_X, _Y), np.arctan2(_Y, _X)
_SOURCE_RZ_MAX = 0.6  # lensed sources: r-z -0.1-0.6 (science.md 2.8)


def _hosts(seed: int, num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LRG r flux and colours within science.md 2.5 (r ~ 18.5-21.5, g-r 1.2-1.9, r-z 0.7-1.5)."""
    rng = np.random.default_rng(seed)
    flux = mag_to_nmgy(rng.uniform(18.5, 21.5, num))
    return flux, rng.uniform(1.2, 1.9, num), rng.uniform(0.7, 1.5, num)


def _render(kind: str, num: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    flux, g_r, r_z = _hosts(seed, num)
    return render_confusers(np.random.default_rng(seed + 1), kind, flux, g_r, r_z), flux


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_each_kind_is_finite_non_negative_and_in_its_documented_range(kind):
    img, flux = _render(kind)
    assert img.shape == (48, 3, STAMP_PX, STAMP_PX) and img.dtype == np.float32
    assert np.isfinite(img).all() and (img >= 0).all()
    total_r = img[:, 1].sum(axis=(1, 2), dtype=np.float64)
    lo, hi = added_flux_bounds(kind, flux)
    # a companion's outskirts may fall off the stamp, so allow a little below the lower bound
    assert (total_r >= 0.9 * lo).all() and (total_r <= hi * (1 + 1e-4)).all()


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown confuser kind"):
        render_confusers(np.random.default_rng(0), "lens", *_hosts(0, 2))


def test_blue_companion_colours_come_from_the_field_not_the_source_recipe():
    """z < 1 star-forming galaxies are redder in r-z than z 1-3 sources (the 4000 A break sits
    in r or z); the old companions were the source recipe, r-z U(-0.1, 0.5)."""
    img, _ = _render("blue_companion", num=200)
    g, r, z = img.sum(axis=(2, 3), dtype=np.float64).T
    r_z = 2.5 * np.log10(z / r)
    assert np.median(r_z) > _SOURCE_RZ_MAX
    assert np.median(2.5 * np.log10(r / g)) < 1.0  # still blue in g-r (not red-sequence)


def _lenspop_source_reff(mag_r: np.ndarray, z_s: np.ndarray) -> np.ndarray:
    """LensPop source size (science.md 2.8) for intrinsic r at z_s, flat-f_nu K-correction."""
    d_a_mpc = sim_field.kpc_per_arcsec(z_s) * 206264.806 / 1e3
    dist_mod = 5 * np.log10(d_a_mpc * (1 + z_s) ** 2 * 1e5)
    abs_mag = mag_r - dist_mod + 2.5 * np.log10(1 + z_s)
    r_kpc = 10 ** (-(abs_mag + 18) / 4) * ((1 + z_s) / 1.6) ** -1.2
    return r_kpc / sim_field.kpc_per_arcsec(z_s)


def test_field_galaxies_differ_from_lensed_sources_at_the_same_magnitude():
    """At r 22-24, star-forming field galaxies sit at z ~ 0.5-1 (sources: 1-3) and are at least
    as large as LensPop sources of that magnitude (median ~1.1x), and well above the old
    source/companion recipe's R_e log-U(0.08, 0.5)" (median 0.2")."""
    rng = np.random.default_rng(2)
    gals = sim_field.draw_field_galaxies(rng, 4000, (22.0, 24.0), late_only=True)
    source = _lenspop_source_reff(gals.mag_r, rng.uniform(1.0, 3.0, len(gals.mag_r)))
    assert np.median(gals.reff_arcsec) > np.median(source)
    assert np.median(gals.reff_arcsec) > 1.5 * 0.2
    assert 0.5 < np.median(gals.redshift) < 1.0


def test_field_counts_rise_by_the_published_slope_and_sizes_shrink_when_fainter():
    gals = sim_field.draw_field_galaxies(np.random.default_rng(3), 60000)
    per_mag = np.histogram(gals.mag_r, bins=[22, 23, 24, 25])[0]
    np.testing.assert_allclose(per_mag[1:] / per_mag[:-1], 10**0.33, rtol=0.1)  # science.md 2.8
    med = [
        np.median(gals.reff_arcsec[(gals.mag_r >= m) & (gals.mag_r < m + 1)]) for m in (19, 22, 24)
    ]
    assert med[0] > med[1] > med[2]


def _winding(img: np.ndarray) -> np.ndarray:
    """Per image: mean over thin annuli (0.4-3") of the m = 2-4 Fourier phase drift, the max m.

    A smooth inclined disk has radius-independent phases (ellipse isophotes), spiral arms wind."""
    coeffs = []
    for r0 in np.arange(0.4, 3.0, 0.262):
        ann = (_R >= r0) & (_R < r0 + 0.262)
        w, t = img[:, ann], _THETA[ann]
        coeffs.append([(w * np.exp(-1j * m * t)).sum(1) / w.sum(1) for m in (2, 3, 4)])
    c = np.asarray(coeffs).transpose(2, 0, 1)  # (n, radii, m)
    ref = np.exp(-1j * np.angle(c.mean(axis=1, keepdims=True)))
    return np.abs((c * ref).imag).mean(axis=1).max(axis=1)


def test_spiral_arms_are_present():
    img, _ = _render("spiral", num=64)
    rng = np.random.default_rng(4)
    q = np.sqrt(rng.uniform(0.5, 1.0, 64) ** 2 * (1 - 0.17**2) + 0.17**2)[:, None, None]
    phi = rng.uniform(0, np.pi, 64)[:, None, None]
    xr = np.cos(phi) * _X + np.sin(phi) * _Y
    yr = (-np.sin(phi) * _X + np.cos(phi) * _Y) / q
    smooth = np.exp(-np.hypot(xr, yr) / rng.uniform(0.3, 1.0, 64)[:, None, None])
    assert np.median(_winding(img[:, 1])) > 2.0 * np.median(_winding(smooth))


def test_ring_has_a_flux_deficit_between_core_and_ring():
    img, _ = _render("ring", num=64)
    edges = np.arange(0.0, 4.0, 0.262)
    prof = np.stack([img[:, 1, (_R >= r0) & (_R < r0 + 0.262)].mean(1) for r0 in edges], 1)
    inner = prof[:, edges < 0.5].min(axis=1)
    assert np.median(inner / prof.max(axis=1)) < 0.3


def test_star_blends_are_point_like_near_the_core():
    img, _ = _render("star_blend", num=64)
    lit = (img[:, 1] > 0).reshape(64, -1).sum(axis=1)
    assert (lit == 1).all()  # all pre-PSF flux in one pixel
    iy, ix = np.unravel_index(img[:, 1].reshape(64, -1).argmax(axis=1), (STAMP_PX, STAMP_PX))
    sep = np.hypot(_AX[ix], _AX[iy])
    assert (sep <= 2.5 + 0.2).all() and (sep >= 0.3 - 0.2).all()


def test_field_neighbours_follow_the_counts():
    img = sim_field.field_neighbours(np.random.default_rng(5), 64)
    assert img.shape == (64, 3, STAMP_PX, STAMP_PX) and img.dtype == np.float32
    assert np.isfinite(img).all() and (img >= 0).all()
    area = ((STAMP_PX * 0.262 + 4.0) / 3600) ** 2
    expected = sim_field.galaxy_counts(np.linspace(16, 25, 901)).sum() * 0.01 * area
    assert 4.0 < expected < 9.0  # ~6 galaxies to r 25 per stamp, as DR10's source density


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_same_seed_same_confusers(kind):
    np.testing.assert_array_equal(_render(kind, 8, seed=7)[0], _render(kind, 8, seed=7)[0])
    assert not np.array_equal(_render(kind, 8, seed=7)[0], _render(kind, 8, seed=9)[0])


def test_same_seed_same_neighbours():
    first = sim_field.field_neighbours(np.random.default_rng(11), 8)
    np.testing.assert_array_equal(first, sim_field.field_neighbours(np.random.default_rng(11), 8))
