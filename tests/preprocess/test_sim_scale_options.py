"""The simulator's large-run options: rows per galaxy and noise quantisation."""

from __future__ import annotations

import numpy as np
import pytest

from haloscope.errors import ConfigError
from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.population import _rows_per_galaxy
from haloscope.preprocess.sim.render import quantize_pixels


def test_selection_frac_zero_gives_two_rows_per_galaxy():
    rows = _rows_per_galaxy(np.random.default_rng(0), 1000, 0.0)
    assert rows.sum() == 1000 and set(rows.tolist()) == {2}


def test_default_selection_frac_gives_about_nine_rows_per_galaxy():
    rows = _rows_per_galaxy(np.random.default_rng(0), 200_000)
    assert rows.sum() == 200_000 and 8.5 < rows.mean() < 9.5


def test_quantize_rounds_to_power_of_two_step_below_sigma_over_q():
    rng = np.random.default_rng(1)
    sky = np.array([[0.003, 0.005, 0.011]])
    images = rng.normal(0.0, 1.0, (1, 3, 64, 64)).astype(np.float32) * sky[..., None, None]
    out = quantize_pixels(images, sky, 4.0)
    for band in range(3):
        step = 2.0 ** np.floor(np.log2(sky[0, band] / 4))
        assert step <= sky[0, band] / 4 < 2 * step
        k = out[0, band] / step
        np.testing.assert_array_equal(k, np.round(k))  # exact multiples of the step
        assert np.abs(out[0, band] - images[0, band]).max() <= step / 2 + 1e-9
        # the added error (uniform, step / sqrt(12)) is a small fraction of the noise
        assert np.std(out[0, band] - images[0, band]) < 0.08 * sky[0, band]


def test_negative_quantize_is_refused():
    with pytest.raises(ConfigError, match="--quantize"):
        SimConfig(out="x", rows=10, quantize=-1)
