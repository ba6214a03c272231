"""Stamps adapter against a zarr store built here, and the central-pixel shortcut audit."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from sklearn.linear_model import LogisticRegression

from haloscope.errors import DataError
from haloscope.evaluate.audit import (
    central_features,
    fit_logistic,
    predict_logistic,
    shortcut_audit,
)
from haloscope.evaluate.gallery import load_gallery_stamps, open_stamp_store
from haloscope.evaluate.scores import scores_from_table


def write_store(path, task_ids, stamps) -> None:
    """The layout the converter writes: group with `stamps` (N,3,64,64) f16 and `task_id`."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("stamps", data=stamps.astype(np.float16), chunks=(16, 3, 64, 64))
    ids = group.create_array("task_id", shape=(len(task_ids),), dtype=str)
    ids[:] = np.asarray(task_ids)


def test_load_gallery_stamps_returns_rows_in_request_order(tmp_path):
    rng = np.random.default_rng(0)
    stamps = rng.normal(size=(40, 3, 64, 64)).astype(np.float16)
    ids = [f"id{i}" for i in range(40)]
    write_store(tmp_path / "stamps.zarr", ids, stamps)
    got = load_gallery_stamps(tmp_path / "stamps.zarr", ["id37", "id2", "id37", "id19"])
    assert got.dtype == np.float32 and got.shape == (4, 3, 64, 64)
    np.testing.assert_array_equal(got, stamps[[37, 2, 37, 19]].astype(np.float32))
    crop = open_stamp_store(tmp_path / "stamps.zarr").read(np.array([5]), half_width=8)
    np.testing.assert_array_equal(crop[0], stamps[5, :, 24:40, 24:40].astype(np.float32))


def test_gallery_errors_name_the_store_and_ids(tmp_path):
    write_store(tmp_path / "s.zarr", ["a", "b"], np.zeros((2, 3, 64, 64)))
    with pytest.raises(DataError, match="not in the store, e.g. \\['zz'\\]"):
        load_gallery_stamps(tmp_path / "s.zarr", ["a", "zz"])
    with pytest.raises(DataError, match="no such zarr store"):
        load_gallery_stamps(tmp_path / "missing.zarr", ["a"])
    zarr.open_group(str(tmp_path / "bad.zarr"), mode="w").create_array(
        "stamps", shape=(1, 3, 64, 64), dtype="f2"
    )
    with pytest.raises(DataError, match="missing array 'task_id'"):
        open_stamp_store(tmp_path / "bad.zarr")


def test_logistic_regression_matches_sklearn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)) * [1, 5, 0.2] + [0, 3, 1]
    y = (x @ [1.0, -0.3, 2.0] + rng.normal(size=400) > 0).astype(float)
    params = fit_logistic(x, y, l2=1e-3)
    mean, std = x.mean(axis=0), x.std(axis=0)
    ref = LogisticRegression(C=1 / (1e-3 * len(x)), tol=1e-12, max_iter=10_000).fit(
        (x - mean) / std, y
    )
    np.testing.assert_allclose(
        predict_logistic(params, x), ref.decision_function((x - mean) / std), atol=1e-5
    )


def test_central_features_are_disc_and_ring_means():
    stamps = np.zeros((1, 3, 16, 16))
    stamps[0, 1, 7:9, 7:9] = 4.0  # 4 central pixels of band r, all inside r < 4
    feats = central_features(stamps)
    disc = np.hypot(*(np.mgrid[:16, :16] - 7.5)) < 4
    assert feats[0, 2] == pytest.approx(16.0 / disc.sum()) and feats[0, [0, 1, 3, 4, 5]].sum() == 0


@pytest.mark.parametrize("core_boost, expect", [(0.0, (0.35, 0.65)), (1.0, (0.9, 1.0))])
def test_shortcut_audit_detects_a_bright_core(tmp_path, scores_table, core_boost, expect):
    labels = np.asarray(scores_table["label"])
    rng = np.random.default_rng(2)
    stamps = rng.normal(size=(len(labels), 3, 64, 64))
    stamps[labels == 1, :, 29:35, 29:35] += core_boost
    write_store(tmp_path / "s.zarr", scores_table["task_id"].to_pylist(), stamps)
    audit = shortcut_audit(scores_from_table(scores_table), open_stamp_store(tmp_path / "s.zarr"))
    assert audit["status"] == "ok" and expect[0] <= audit["auroc"] <= expect[1]
    assert audit["num_fit"] + audit["num_eval"] == len(labels)


def test_shortcut_audit_skips_without_stamps(scores_table):
    audit = shortcut_audit(scores_from_table(scores_table), None)
    assert audit["status"] == "skipped" and "--stamps" in audit["note"]
