"""Near-miss controls: an LRG lensing a source just outside its caustics (one weak image)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from haloscope.preprocess.sim.config import CONTROL_KINDS, SimConfig
from haloscope.preprocess.sim.physics import PIXEL_SCALE, moffat_fwhm_from_psfsize, moffat_kernels
from haloscope.preprocess.sim.population import draw_population
from haloscope.preprocess.sim.realism import count_images
from haloscope.preprocess.sim.render import near_miss_light, render_batch
from haloscope.preprocess.sim.rows import batch_table

_NEAR = CONTROL_KINDS.index("near_miss")
_LENS_KEYS = ("theta_e", "mass_q", "mass_phi", "gamma1", "gamma2")


def _population(seed: int) -> dict[str, np.ndarray]:
    """Controls only, all confusers: about 1 galaxy in 7 is a near miss."""
    cfg = SimConfig(out="unused", rows=1200, control_frac=1.0, confuser_frac=1.0)
    return draw_population(np.random.default_rng(seed), cfg, 0, cfg.rows)


def _render(pop: dict[str, np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fwhm_px = moffat_fwhm_from_psfsize(pop["psf_local"][idx]) / PIXEL_SCALE
    kernels = moffat_kernels(fwhm_px.reshape(-1))
    return near_miss_light(pop, idx, kernels.reshape(len(idx), 3, *kernels.shape[-2:]))


@pytest.fixture(scope="module")
def near_misses() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    pop = _population(4)
    idx = np.flatnonzero(pop["control_kind"] == _NEAR)
    images, mag = _render(pop, idx)
    return pop, idx, images, mag


def test_near_misses_are_drawn_as_controls(near_misses):
    pop, idx, _, _ = near_misses
    assert len(idx) >= 12
    assert pop["is_control"][idx].all()


def test_every_point_of_the_source_light_has_one_image(near_misses):
    """The centre and 8 points on the source's light radius (2 R_e along the major axis).

    ``count_images`` searches +-3.2 theta_E, which holds the image of a source within
    ~2.1 theta_E; farther points (0 images found) are checked for no counter-image only.
    """
    pop, idx, _, _ = near_misses
    for g in idx[:12]:
        lens = tuple(float(pop[k][g]) for k in _LENS_KEYS)
        radius = 2 * pop["src_reff"][g] / np.sqrt(pop["src_q"][g])
        cx, cy = pop["src_x"][g, 0], pop["src_y"][g, 0]
        points = np.array(
            [(cx, cy)]
            + [
                (cx + radius * np.cos(a), cy + radius * np.sin(a))
                for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)
            ]
        )
        counts = np.array([count_images(lens, tuple(p), num=240) for p in points])
        near = np.hypot(points[:, 0], points[:, 1]) < 2.0 * lens[0]
        assert (counts <= 1).all() and (counts[near] == 1).all()


def test_the_image_is_one_connected_blob(near_misses):
    _, _, images, _ = near_misses
    for img in images[:, 1]:
        _, num_blobs = ndimage.label(img > 0.02 * img.max())
        assert num_blobs == 1


def test_the_image_is_weakly_magnified(near_misses):
    pop, idx, images, mag = near_misses
    assert (mag > 1.0).all() and (mag < 2.0).all()
    # the centre's point-source magnification, as drawn, is within 10% of the rendered one
    np.testing.assert_allclose(pop["mu_map"][idx, 0], mag, rtol=0.1)
    assert 1.2 < np.median(mag) < 1.8
    # the lensed light is on the stamp and finite
    flux = 10 ** (-0.4 * (pop["src_mag_r"][idx] - 22.5)) * mag
    assert np.isfinite(images).all() and (images[:, 1].sum(axis=(1, 2)) <= flux * 1.001).all()


def test_sources_sit_just_outside_the_caustics(near_misses):
    pop, idx, _, _ = near_misses
    beta = np.hypot(pop["src_x"][idx, 0], pop["src_y"][idx, 0]) / pop["theta_e"][idx]
    assert beta.min() > 1.0 and np.median(beta) < 3.0
    np.testing.assert_array_equal(pop["src_x"][idx, 0], pop["src_x"][idx, 1])


def test_the_control_row_has_control_truth(near_misses):
    pop, idx, _, _ = near_misses
    sub = {k: v[idx[:3]] for k, v in pop.items()}
    rb = render_batch(np.random.default_rng(0), sub)
    rows = batch_table(sub, rb, [[b""]] * 3)[0].to_pylist()
    assert len(rows) == sub["num_rows"].sum()
    for row in rows:
        assert row["is_control"] == 1 and row["control_kind"] == "near_miss"
        assert row["config_id"] == "CONTROL" and row["lens_model"] == "CONTROL"
        assert row["theta_e_arcsec"] == 0.0 and row["src_x_arcsec"] == 0.0
        assert row["src_mag_r"] is None and row["psf_fwhm_used_r"] is None
        assert row["magnification"] is None and row["arc_snr"] is None


def test_same_seed_same_near_misses():
    first, second, other = _population(9), _population(9), _population(10)
    idx = np.flatnonzero(first["control_kind"] == _NEAR)[:4]
    for key in ("src_x", "src_y", "src_mag_r", "src_reff", "knot_dx"):
        np.testing.assert_array_equal(first[key], second[key])
    np.testing.assert_array_equal(_render(first, idx)[0], _render(second, idx)[0])
    assert not np.array_equal(first["src_x"], other["src_x"])
