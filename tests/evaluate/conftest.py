"""Shared fixtures for the evaluate tests: small scores tables written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zarr


def make_scores_table(
    num_rows: int = 600, seed: int = 0, split: str = "test", model: str = "m"
) -> pa.Table:
    """A scores table in the architecture's layout with plausible strata and ties."""
    rng = np.random.default_rng(seed)
    label = (rng.random(num_rows) < 0.4).astype(np.int8)
    theta = np.where(label == 1, rng.uniform(0.5, 2.5, num_rows), np.nan)
    psf = rng.uniform(0.9, 1.8, num_rows)
    arc_snr = np.where(label == 1, rng.lognormal(1.5, 1.0, num_rows), np.nan)
    logit = rng.normal(0, 1.5, num_rows) + 3.0 * label + np.where(label == 1, theta / psf, 0)
    logit = np.round(logit, 1).astype(np.float32)  # ties on purpose
    kinds = np.array(["plain", "ring", "spiral"])[rng.integers(0, 3, num_rows)]

    def lens_only(values: np.ndarray) -> np.ndarray:
        return np.where(label == 1, values, np.nan)

    mock = {  # the mock v2 columns (issue 16 item 4), lenses only
        "arc_snr_sum": lens_only(arc_snr * rng.uniform(3, 12, num_rows)),
        "magnification": lens_only(rng.lognormal(1.7, 0.5, num_rows)),
        "arc_lens_flux_ratio": lens_only(rng.lognormal(-2.0, 1.0, num_rows)),
        "tangential_stretch": lens_only(rng.lognormal(1.2, 0.5, num_rows)),
        "radial_stretch": lens_only(rng.uniform(0.8, 1.5, num_rows)),
        "src_redshift": lens_only(rng.uniform(1.0, 3.0, num_rows)),
    }
    return pa.table(
        {
            "task_id": [f"t{i:05d}" for i in range(num_rows)],
            "ra": rng.uniform(0, 360, num_rows),
            "dec": rng.uniform(-30, 30, num_rows),
            "brickname": ["b"] * num_rows,
            "split": [split] * num_rows,
            "label": pa.array(label, pa.int8()),
            "is_hard_neg": np.zeros(num_rows, bool),
            "theta_e_arcsec": theta,
            "psf_fwhm_r": psf,
            "theta_over_psf": theta / psf,
            "psfsize_r": psf,
            "psfdepth_r": rng.uniform(23.5, 25, num_rows),
            "arc_snr": arc_snr,
            "src_dmag": np.where(label == 1, rng.uniform(0.5, 3, num_rows), np.nan),
            "control_kind": [None if y else str(k) for y, k in zip(label, kinds, strict=True)],
            **mock,
            "logit": logit,
            "score": (1 / (1 + np.exp(-logit))).astype(np.float32),
            "model": [model] * num_rows,
        }
    )


def make_seed_table(num_rows: int = 600, seed: int = 0, split: str = "test") -> pa.Table:
    """A scores table as the seed's ``phase5_infer_scores_v2.py`` wrote it.

    ``is_control`` (int32, 1 = control) instead of ``label``; ``score`` only (bf16-quantised,
    no ``logit``); ``region_split``, ``psf_fwhm_used_r`` (NULL for controls) and
    ``theta_e_arcsec = 0`` for controls; no ``task_id`` and no ``model``.
    """
    ours = make_scores_table(num_rows, seed, split)
    label = np.asarray(ours["label"])
    score = np.round(np.asarray(ours["score"], np.float64) * 256) / 256  # bf16-like ties
    return pa.table(
        {
            "ra": ours["ra"],
            "dec": ours["dec"],
            "brickname": ours["brickname"],
            "region_split": ours["split"],
            "is_control": pa.array(1 - label, pa.int32()),
            "theta_e_arcsec": np.nan_to_num(np.asarray(ours["theta_e_arcsec"])),
            "psf_fwhm_used_r": pa.array(
                [
                    float(p) if y else None
                    for y, p in zip(label, np.asarray(ours["psf_fwhm_r"]), strict=True)
                ]
            ),
            "psfsize_r": ours["psfsize_r"],
            "arc_snr": ours["arc_snr"],
            "cutout_ok": pa.array(np.ones(num_rows, np.int32)),
            "score": pa.array(score.astype(np.float32)),
        }
    )


def write_stamps_store(path: Path, task_ids: list[str], stamps: np.ndarray) -> Path:
    """The layout the converter writes: a group with ``stamps`` (N,3,64,64) f16 and ``task_id``."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("stamps", data=stamps.astype(np.float16), chunks=(64, 3, 64, 64))
    ids = group.create_array("task_id", shape=(len(task_ids),), dtype=str)
    ids[:] = np.asarray(task_ids)
    return path


@pytest.fixture
def scores_table() -> pa.Table:
    """600 rows, ~40% lenses, tied logits."""
    return make_scores_table()


@pytest.fixture(scope="session")
def make_scores():
    """The :func:`make_scores_table` factory (importlib mode cannot import conftest)."""
    return make_scores_table


@pytest.fixture(scope="session")
def make_seed_scores():
    """The :func:`make_seed_table` factory."""
    return make_seed_table


@pytest.fixture(scope="session")
def write_stamps():
    """The :func:`write_stamps_store` writer."""
    return write_stamps_store
