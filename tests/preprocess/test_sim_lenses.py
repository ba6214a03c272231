"""The lens population of the mock: truth columns, ray-tracing box, magnifications, distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.physics import (
    PIXEL_SCALE,
    convolve_full,
    kernel_spectra,
    lens_eigenvalues,
    moffat_fwhm_from_psfsize,
    moffat_kernels,
    sky_sigma_nmgy,
)
from haloscope.preprocess.sim.population import draw_population
from haloscope.preprocess.sim.realism import count_images
from haloscope.preprocess.sim.render import (
    EXPTIME_S,
    GAIN_E_PER_NMGY_S,
    _paste,
    _unit_arcs,
    _unit_stamps,
    box_px_needed,
    render_batch,
)
from haloscope.preprocess.sim.sources import (
    MAP_HALF,
    MAP_PX,
    SRC_MAG_RANGE,
    magnification_maps,
)

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver  # noqa: E402
from lenstronomy.LightModel.light_model import LightModel  # noqa: E402

# (theta_E, q, phi, gamma1, gamma2)
CONFIGS = [
    (1.2, 0.7, 0.3, 0.0, 0.0),
    (0.6, 0.55, -1.1, 0.03, -0.05),
    (2.4, 0.95, 2.0, -0.06, 0.02),
]


def _kwargs(theta_e, q, phi, g1, g2):
    e = (1 - q) / (1 + q)
    return [
        {"theta_E": theta_e, "e1": e * math.cos(2 * phi), "e2": e * math.sin(2 * phi)},
        {"gamma1": g1, "gamma2": g2},
    ]


def _lenstronomy_images(config, beta):
    lens = LensModel(["SIE", "SHEAR"])
    kw = _kwargs(*config)
    xs, ys = LensEquationSolver(lens).image_position_from_source(
        beta[0], beta[1], kw, min_distance=0.01, search_window=5 * config[0], precision_limit=1e-10
    )
    return xs, ys, lens.magnification(xs, ys, kw)


def _positives(rows: int, seed: int = 0) -> dict:
    cfg = SimConfig(out="unused", rows=rows, control_frac=0.0)
    return draw_population(np.random.default_rng(seed), cfg, chunk=0, num_rows=rows)


def _kernels(pop: dict, idx: np.ndarray) -> np.ndarray:
    fwhm_px = moffat_fwhm_from_psfsize(pop["psf_local"][idx]) / PIXEL_SCALE
    return moffat_kernels(fwhm_px.reshape(-1)).reshape(len(idx), 3, 33, 33)


# --- truth columns -----------------------------------------------------------------------------


def test_arc_snr_is_peak_of_noise_free_arc_over_coadd_sigma():
    """The original's definition: peak r pixel of the noise-free arc over the coadd sigma."""
    pop = _positives(300)
    pop["lens_mag"][:] = 45.0  # no lens light: the coadd sigma is the sky sigma
    pop["src_mag_r"][:] = 20.5  # bright arcs, whose own shot noise would matter
    rng = np.random.default_rng(1)
    rb = render_batch(rng, pop, with_neighbours=False, keep_arcs=True)
    sky = sky_sigma_nmgy(pop["depth_local"], pop["psf_local"])[rb.pos_index]  # (P, 3)
    for band, col in enumerate(("arc_snr_g", "arc_snr", "arc_snr_z")):
        direct = rb.arcs[:, :, band].max(axis=(2, 3)) / sky[:, None, band]
        np.testing.assert_allclose(rb.truth[col], direct, rtol=1e-5)
    # the pixels do carry the arc's shot noise; the old definition put it into the SNR
    gain = (GAIN_E_PER_NMGY_S * EXPTIME_S)[1] * pop["n_exp"][rb.pos_index]
    arc_r = rb.arcs[:, :, 1]
    with_shot = arc_r / np.sqrt(
        sky[:, None, 1, None, None] ** 2 + arc_r / gain[:, None, None, None]
    )
    assert np.median(rb.truth["arc_snr"] / with_shot.max(axis=(2, 3))) > 1.1
    resid = rb.positives[:, :, 1] - rb.base[rb.pos_index, None, 1] - arc_r
    bright = arc_r > 0.5 * arc_r.max(axis=(2, 3), keepdims=True)
    pull = resid[bright] / np.sqrt((arc_r / gain[:, None, None, None])[bright])
    assert 0.8 < pull.std() < 1.2


def test_arc_snr_sum_is_lenspop_optimal_pixel_snr():
    pop = _positives(200)
    rng = np.random.default_rng(2)
    rb = render_batch(rng, pop, keep_arcs=True)
    pop["lens_mag"][:] = 45.0
    arcs = rb.arcs[:, :, 1]
    # brute force over every pixel for a few lenses, sky-only sigma on lens-free copies
    lens_free = render_batch(np.random.default_rng(2), pop, with_neighbours=False, keep_arcs=True)
    sky = sky_sigma_nmgy(pop["depth_local"], pop["psf_local"])[lens_free.pos_index, 1]
    for p in range(min(8, len(arcs))):
        for rep in range(2):
            s = lens_free.arcs[p, rep, 1].ravel().astype(np.float64)
            order = np.argsort(-s)
            cum = np.cumsum(s[order]) / np.sqrt(np.arange(1, s.size + 1) * sky[p] ** 2)
            assert lens_free.truth["arc_snr_sum"][p, rep] == pytest.approx(cum.max(), rel=1e-5)
    assert np.all(rb.truth["arc_snr_sum"] >= rb.truth["arc_snr"])  # a peak pixel is one set


def test_stretches_and_flux_ratio_are_consistent():
    pop = _positives(400)
    rb = render_batch(np.random.default_rng(3), pop, keep_arcs=True)
    t = rb.truth
    assert np.all(t["tangential_stretch"] >= 1.0) and np.all(t["radial_stretch"] > 0.5)
    assert np.median(t["radial_stretch"]) == pytest.approx(1.0, abs=0.05)  # isothermal + shear
    lens_r = 10 ** (-0.4 * (pop["lens_mag"][rb.pos_index, 1] - 22.5))
    flux = rb.arcs[:, :, 1].sum(axis=(2, 3))
    np.testing.assert_allclose(t["arc_lens_flux_ratio"], flux / lens_r[:, None], rtol=1e-5)


# --- no truncation -----------------------------------------------------------------------------


def _largest_system() -> dict:
    """theta_E 2.5" (the largest), strong shear, and the largest, flattest, widest source."""
    one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    knots_x = np.array([[3.0, -3.0, 2.0, -2.0, 0.0, 1.0]]) * 1.2 / math.sqrt(0.3)
    pop = {
        "theta_e": one(2.5),
        "mass_q": one(0.5),
        "mass_phi": one(0.4),
        "gamma1": one(0.08),
        "gamma2": one(0.0),
        "shear": one(0.08),
        "src_x": np.array([[0.9, -0.6]]),
        "src_y": np.array([[0.5, 0.8]]),
        "src_phi": np.array([[0.2, 1.4]]),
        "src_reff": one(1.2),
        "src_n": one(1.5),
        "src_q": one(0.3),
        "src_gr": one(0.3),
        "src_rz": one(0.2),
        "knot_frac": one(0.3),
        "knot_w": np.full((1, 6), 1 / 6),
        "knot_dx": knots_x,
        "knot_dy": np.zeros((1, 6)),
        "knot_sigma": np.full((1, 6), 0.3),
        "psf_local": np.array([[1.5, 1.4, 1.3]]),
    }
    return pop


def test_ray_tracing_box_loses_no_flux_for_largest_theta_e_and_source():
    pop = _largest_system()
    idx = np.array([0])
    kernels = _kernels(pop, idx)
    stamps, mag, _ = _unit_stamps(pop, idx, kernels)
    big_px = 256  # 67": every image of this source, whatever reaches the stamp or not
    spectra = kernel_spectra(kernels, big_px)
    for rep in range(2):
        unit, _ = _unit_arcs(pop, idx, rep, big_px)
        ref = _paste(convolve_full(unit, spectra, 33), big_px, 33)
        scale = ref[:, 1].max()
        np.testing.assert_allclose(stamps[:, rep], ref, atol=2e-5 * scale)
        assert stamps[0, rep, 1].sum() == pytest.approx(ref[0, 1].sum(), rel=1e-4)
        assert mag[0, rep] == pytest.approx(unit[0, 1].sum(), rel=5e-3)  # total lensed flux
        # the old fixed 40-px box would have cut this configuration
        old, _ = _unit_arcs(pop, idx, rep, 40)
        assert old[0, 1].sum() < 0.9 * unit[0, 1].sum()


def test_box_is_chosen_to_hold_every_image():
    pop = _positives(4000)
    idx = np.flatnonzero(~pop["is_control"])[:300]
    boxes = box_px_needed(pop, idx)
    beta = np.hypot(pop["src_x"][idx], pop["src_y"][idx]).max(axis=1)
    reach = pop["theta_e"][idx] * 1.1 + beta  # images of the centre (q >= 0.5, shear <= 0.08)
    assert np.all(boxes / 2 * PIXEL_SCALE >= np.minimum(reach, 48 * PIXEL_SCALE))


# --- magnification against lenstronomy ---------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_lens_eigenvalues_give_lenstronomy_magnification(config):
    xs, ys, mu = _lenstronomy_images(config, (0.12 * config[0], -0.07 * config[0]))
    assert len(xs) >= 2
    lam_t, lam_r = lens_eigenvalues(xs, ys, tuple(np.float64(v) for v in config))
    np.testing.assert_allclose(1.0 / (lam_t * lam_r), mu, rtol=1e-4)
    assert np.all(np.abs(lam_t) <= np.abs(lam_r) + 1e-9)  # tangential stretch is the larger


@pytest.mark.parametrize("config", CONFIGS)
def test_magnification_map_matches_lenstronomy_total(config):
    """Map pixels against lenstronomy's sum of |mu_i|, averaged over 2x2 points of the pixel.

    The map is a histogram of ray-traced grid points (a few tens per pixel), so it is a 10-15%
    estimate away from caustics (next to one, a pixel's mean holds the fold's divergence); it
    only steers the source placement, and the table's magnification is measured on the arc.
    """
    theta_e, q, phi, g1, g2 = config
    maps = magnification_maps(np.array([q]), np.array([phi]), np.array([g1]), np.array([g2]))
    h = 2 * MAP_HALF / MAP_PX
    mu_map = maps[0, 0]
    hood = np.lib.stride_tricks.sliding_window_view(np.pad(mu_map, 1, mode="edge"), (3, 3))
    smooth = hood.max(axis=(2, 3)) < 1.3 * hood.min(axis=(2, 3))  # no caustic next to it
    c = (np.arange(MAP_PX) + 0.5) * h - MAP_HALF
    smooth &= np.hypot(c[None, :], c[:, None]) < 1.2  # inside the traced image plane's reach
    picks = np.flatnonzero(smooth)[:: max(1, smooth.sum() // 4)][:4]
    assert len(picks) >= 3
    for iy, ix in zip(*np.unravel_index(picks, mu_map.shape), strict=True):
        mus = []
        for fy in (0.25, 0.75):
            for fx in (0.25, 0.75):
                beta = ((ix + fx) * h - MAP_HALF, (iy + fy) * h - MAP_HALF)
                _, _, mu = _lenstronomy_images(config, (beta[0] * theta_e, beta[1] * theta_e))
                mus.append(np.abs(mu).sum())
        assert mu_map[iy, ix] == pytest.approx(np.mean(mus), rel=0.15), (iy, ix)


def _extended_magnification(config, src: dict) -> float:
    """lenstronomy: lensed over intrinsic flux of a Sersic source on a 0.02" grid."""
    light = LightModel(["SERSIC_ELLIPSE"])
    kw = [{"amp": 1.0, "e1": 0.0, "e2": 0.0, **src}]
    step = 0.02
    g = np.arange(-8, 8, step) + step / 2
    x, y = np.meshgrid(g, g)
    bx, by = LensModel(["SIE", "SHEAR"]).ray_shooting(x.ravel(), y.ravel(), _kwargs(*config))
    lensed = light.surface_brightness(bx, by, kw).sum() * step**2
    fine = np.arange(-6, 6, 0.005) + 0.0025
    sx, sy = np.meshgrid(fine + src["center_x"], fine + src["center_y"])
    return lensed / (light.surface_brightness(sx.ravel(), sy.ravel(), kw).sum() * 0.005**2)


@pytest.mark.parametrize(("reff", "n"), [(0.15, 0.5), (0.3, 1.0)])
def test_rendered_magnification_matches_lenstronomy_extended_source(reff, n):
    pop = _largest_system()
    pop["src_reff"][:], pop["src_n"][:], pop["src_q"][:] = reff, n, 1.0
    pop["knot_frac"][:] = 0.0
    pop["shear"][:], pop["gamma1"][:], pop["mass_q"][:] = 0.03, 0.03, 0.8
    pop["src_x"][:], pop["src_y"][:] = [[0.6, -1.0]], [[0.3, 0.1]]
    idx = np.array([0])
    _, mag, _ = _unit_stamps(pop, idx, _kernels(pop, idx))
    config = (2.5, 0.8, 0.4, 0.03, 0.0)
    for rep in range(2):
        src = {"R_sersic": reff, "n_sersic": n}
        src.update(center_x=pop["src_x"][0, rep], center_y=pop["src_y"][0, rep])
        assert mag[0, rep] == pytest.approx(_extended_magnification(config, src), rel=5e-3)


# --- population ---------------------------------------------------------------------------------


def test_image_counter_agrees_with_lenstronomy():
    for config in CONFIGS:
        for frac in (0.05, 0.3, 0.8, 1.6):
            beta = (frac * config[0] * 0.8, frac * config[0] * 0.6)
            xs, _, _ = _lenstronomy_images(config, beta)
            assert count_images(config, beta) == len(xs), (config, frac)


@pytest.fixture(scope="module")
def lens_sample():
    pop = _positives(16000, seed=4)
    idx = np.flatnonzero(~pop["is_control"])
    _, mag, _ = _unit_stamps(pop, idx, _kernels(pop, idx))
    return pop, idx, mag


def test_magnification_median_at_least_five(lens_sample):
    _, _, mag = lens_sample
    assert mag.size > 2500
    assert np.median(mag) >= 5.0  # real galaxy-galaxy samples ~5-6; mock v1 had 3.0
    assert np.percentile(mag, 5) > 2.5  # strongly lensed: LensPop's mu > 3 (finite source)


def test_most_systems_are_multiply_imaged(lens_sample):
    pop, idx, _ = lens_sample
    counts = []
    for g in idx[:150]:
        config = tuple(
            float(pop[k][g]) for k in ("theta_e", "mass_q", "mass_phi", "gamma1", "gamma2")
        )
        counts.append(count_images(config, (pop["src_x"][g, 0], pop["src_y"][g, 0]), num=240))
    counts = np.array(counts)
    assert np.mean(counts >= 2) > 0.85
    assert 0.05 < np.mean(counts >= 4) < 0.7  # quads (folds, cusps) next to doubles


def test_source_magnitudes_follow_counts_without_pileup(lens_sample):
    pop, idx, mag = lens_sample
    m = pop["src_mag_r"][idx]
    lo, hi = SRC_MAG_RANGE
    assert np.all((m >= lo) & (m <= hi))
    assert np.mean(m < lo + 0.02) < 0.01 and np.mean(m > hi - 0.02) < 0.01  # no clip pile-up
    assert np.unique(np.round(m, 6)).size > 0.99 * m.size
    lensed = m - 2.5 * np.log10(mag[:, 0])
    assert np.median(lensed) < np.median(pop["depth_local"][idx, 1]) - 1.0  # visible arcs
    reff = pop["src_reff"][idx]
    assert np.percentile(reff, 95) > 0.5 and reff.max() <= 1.2  # sizes up to ~1"
    bright = m < np.median(m)
    assert np.median(reff[bright]) > np.median(reff[~bright])  # size-luminosity relation
