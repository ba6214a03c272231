"""Shared fixtures for the evaluate tests: small scores tables written on the fly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest


def make_scores_table(num_rows: int = 600, seed: int = 0, split: str = "test",
                      model: str = "m") -> pa.Table:  # fmt: skip
    """A scores table in the architecture's layout with plausible strata and ties."""
    rng = np.random.default_rng(seed)
    label = (rng.random(num_rows) < 0.4).astype(np.int8)
    theta = np.where(label == 1, rng.uniform(0.5, 2.5, num_rows), np.nan)
    psf = rng.uniform(0.9, 1.8, num_rows)
    arc_snr = np.where(label == 1, rng.lognormal(1.5, 1.0, num_rows), np.nan)
    logit = rng.normal(0, 1.5, num_rows) + 3.0 * label + np.where(label == 1, theta / psf, 0)
    logit = np.round(logit, 1).astype(np.float32)  # ties on purpose
    kinds = np.array(["plain", "ring", "spiral"])[rng.integers(0, 3, num_rows)]
    return pa.table({
        "task_id": [f"t{i:05d}" for i in range(num_rows)],
        "ra": rng.uniform(0, 360, num_rows), "dec": rng.uniform(-30, 30, num_rows),
        "brickname": ["b"] * num_rows, "split": [split] * num_rows,
        "label": pa.array(label, pa.int8()), "is_hard_neg": np.zeros(num_rows, bool),
        "theta_e_arcsec": theta, "psf_fwhm_r": psf, "theta_over_psf": theta / psf,
        "psfsize_r": psf, "psfdepth_r": rng.uniform(23.5, 25, num_rows),
        "arc_snr": arc_snr, "src_dmag": np.where(label == 1, rng.uniform(0.5, 3, num_rows), np.nan),
        "control_kind": [None if y else str(k) for y, k in zip(label, kinds, strict=True)],
        "logit": logit, "score": (1 / (1 + np.exp(-logit))).astype(np.float32),
        "model": [model] * num_rows,
    })  # fmt: skip


@pytest.fixture
def scores_table() -> pa.Table:
    """600 rows, ~40% lenses, tied logits."""
    return make_scores_table()


@pytest.fixture
def make_scores():
    """The :func:`make_scores_table` factory (importlib mode cannot import conftest)."""
    return make_scores_table
