"""parquet -> shards converter: round trip, counted rejects, dedup, hard negatives, manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from haloscope.errors import ConfigError, ContractError, DataError
from haloscope.preprocess.normalize import (
    asinh_normalize,
    norm_settings,
    normalize,
    outer_normalize,
)
from haloscope.preprocess.schema import STRATA_COLUMNS
from haloscope.shards.manifest import load_manifest
from haloscope.shards.read import ShardReader
from haloscope.shards.schema import SCHEMA_VERSION
from tests.preprocess.contract_rows import SCHEMA, base_row, write_dataset
from tests.shards.shard_fixtures import HN_WEIGHT, make_survey, run_convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    survey = make_survey(root)
    run_convert(
        survey.root, root / "shards", hard_neg_path=survey.lookup, hard_neg_weight=HN_WEIGHT
    )
    return survey, root / "shards"


def _all_samples(split_dir: Path) -> dict[str, np.ndarray]:
    reader = ShardReader(split_dir, batch_size=7, shuffle=False, drop_last=False, with_table=True)
    out = {"image": [], "meta": [], "table": []}
    for batch in reader:
        valid = batch["valid"].numpy()
        out["image"].append(batch["image"].numpy()[valid])
        out["meta"].append(batch["meta"].numpy()[valid])
        out["table"].append(batch["table"][valid])
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_round_trip_is_bit_exact(converted, split):
    survey, shards = converted
    got = _all_samples(shards / split)
    ids = [t.decode() for t in got["table"]["task_id"]]
    for i, tid in enumerate(ids):
        want = asinh_normalize(survey.stamps[tid][None]).astype(np.float16)[0]  # the default
        assert got["image"][i].tobytes() == want.tobytes(), tid
        np.testing.assert_array_equal(got["meta"][i], np.float32(survey.meta[tid]))
    assert got["table"]["label"].tolist() == [survey.labels[t] for t in ids]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_accepted_row_once_and_hard_negatives_weight_times(converted, split):
    survey, shards = converted
    got = _all_samples(shards / split)
    ids = Counter(t.decode() for t in got["table"]["task_id"])
    assert set(ids) == survey.accepted[split]
    weight = HN_WEIGHT if split == "train" else 1  # duplicates belong to train only
    for tid, n in ids.items():
        expected = weight if tid in survey.hard_neg else 1
        assert n == expected, tid
    copies = got["table"][got["table"]["hard_neg"] == 1]
    for tid in {t.decode() for t in copies["task_id"]}:
        assert sorted(copies["copy"][copies["task_id"] == tid.encode()]) == list(range(weight))
    assert (got["table"]["label"][got["table"]["hard_neg"] == 1] == 0).all()


def test_hard_negatives_duplicated_in_train_only(converted):
    """A lookup naming val/test controls flags them once there; only train repeats them."""
    survey, shards = converted
    for split in ("val", "test"):
        matched = survey.hard_neg & survey.accepted[split]
        assert matched, "the fixture's lookup must name controls of every split"
        m = load_manifest(shards / split)
        assert m.num_samples == len(survey.accepted[split])
        assert m.counts["hard_neg_matches"] == len(matched)
        assert m.counts["hard_neg_rows"] == m.counts["hard_neg_samples"] == len(matched)
        assert m.preprocess["hard_neg_copies"] == 1
    train = load_manifest(shards / "train")
    matched = survey.hard_neg & survey.accepted["train"]
    assert train.num_samples == len(survey.accepted["train"]) + len(matched) * (HN_WEIGHT - 1)
    assert train.preprocess["hard_neg_copies"] == HN_WEIGHT


def test_rejected_rows_are_counted_by_reason(converted):
    survey, shards = converted
    for split in ("train", "val", "test"):
        m = load_manifest(shards / split)
        assert m.rejected == survey.rejected[split]
        assert m.counts["accepted_rows"] == m.counts["input_rows"] - sum(
            v for k, v in m.rejected.items() if k != "duplicate"
        )


def test_manifest_contents(converted):
    survey, shards = converted
    train = load_manifest(shards / "train")
    hn_train = len([t for t in survey.hard_neg if t in survey.accepted["train"]])
    assert train.counts["hard_neg_rows"] == hn_train
    assert train.counts["hard_neg_samples"] == hn_train * HN_WEIGHT
    # the lens in the lookup is input row 0, which also has a pixel-identical duplicate row:
    # both input rows match (counted before de-duplication) and neither is flagged
    assert train.counts["lookup_lens_matches"] == 2
    assert train.num_samples == len(survey.accepted["train"]) + hn_train * (HN_WEIGHT - 1)
    assert train.preprocess["hard_neg_weight"] == HN_WEIGHT
    assert train.preprocess["hard_neg_lookup"]["sha256"]
    assert train.preprocess["min_theta_over_psf"] == 0.5
    assert train.norm == norm_settings("asinh")
    files = train.raw["sources"]["files"]
    assert len(files) == 2 and sum(f["rows"] for f in files) == train.counts["input_rows"]
    assert len(train.shards) > 1 and all(len(s["sha256"]) == 64 for s in train.shards)
    # meta statistics: the unique accepted train rows (hard-negative copies excluded, so the
    # statistics do not depend on the lookup), reused by val/test
    samples = _all_samples(shards / "train")
    got = samples["meta"][samples["table"]["copy"] == 0].astype(np.float64)
    assert len(got) == len(survey.accepted["train"]) < len(samples["meta"])
    assert train.raw["meta"]["stats_count"] == len(got)
    np.testing.assert_allclose(train.meta_mean, got.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(train.meta_std, got.std(axis=0), rtol=1e-9)
    for split in ("val", "test"):
        m = load_manifest(shards / split)
        assert m.meta_mean == train.meta_mean and m.meta_std == train.meta_std
        assert m.meta_columns == ["psfsize_r", "psfdepth_r"]


def test_zarr_store_matches_shard_order(converted):
    _, shards = converted
    got = _all_samples(shards / "val")
    store = zarr.open_group(str(shards / "val" / "stamps.zarr"), mode="r")
    assert store["stamps"].shape == got["image"].shape
    np.testing.assert_array_equal(store["stamps"][:], got["image"])
    np.testing.assert_array_equal(store["meta"][:], got["meta"])
    assert list(store["task_id"][:]) == [t.decode() for t in got["table"]["task_id"]]
    np.testing.assert_array_equal(store["label"][:], got["table"]["label"])
    assert store["stamps"].chunks[0] == 256


def test_missing_column_and_layout_errors(tmp_path):
    survey = make_survey(tmp_path, sizes={"train": 9, "val": 3, "test": 3})
    victim = next((survey.root / "region_split=val").glob("*.parquet"))
    pq.write_table(pq.read_table(victim).drop(["psfdepth_r"]), victim)
    with pytest.raises(ContractError, match=r"part-00000.parquet.*psfdepth_r"):
        run_convert(survey.root, tmp_path / "out")
    flat = tmp_path / "flat"
    flat.mkdir()
    pq.write_table(pq.read_table(victim), flat / "x.parquet")
    with pytest.raises(ContractError, match="not a hive-partitioned"):
        run_convert(flat, tmp_path / "out2")


@pytest.mark.parametrize(
    "col",
    [
        "theta_e_arcsec",
        "src_dmag",
        "psf_fwhm_used_r",
        "arc_snr",
        "is_control",
        "lens_model",
        "magnification",
    ],
)
def test_label_leaking_meta_refused(tmp_path, col):
    with pytest.raises(ConfigError, match=col):
        run_convert(tmp_path, tmp_path / "out", meta_cols=("psfsize_r", col))


def test_unknown_meta_and_bad_flags_refused(tmp_path):
    with pytest.raises(ConfigError, match="allow-list"):
        run_convert(tmp_path, tmp_path / "o", meta_cols=("ra",))
    with pytest.raises(ConfigError, match="hard-neg-weight"):
        run_convert(tmp_path, tmp_path / "o", hard_neg_weight=0)
    with pytest.raises(ConfigError, match="task-index"):
        run_convert(tmp_path, tmp_path / "o", task_index=2, num_tasks=2)


def test_missing_or_empty_lookup_is_an_error(tmp_path):
    survey = make_survey(tmp_path, sizes={"train": 9, "val": 3, "test": 3})
    with pytest.raises(DataError, match="not found"):
        run_convert(survey.root, tmp_path / "o", hard_neg_path=tmp_path / "nope.parquet")
    empty = tmp_path / "empty.parquet"
    pq.write_table(
        pa.table({"ra_key": pa.array([], pa.float64()), "dec_key": pa.array([], pa.float64())}),
        empty,
    )
    with pytest.raises(DataError, match="empty"):
        run_convert(survey.root, tmp_path / "o", hard_neg_path=empty)


def test_no_meta_columns_and_val_only_reuse_train_stats(tmp_path):
    survey = make_survey(tmp_path, sizes={"train": 12, "val": 6, "test": 3})
    run_convert(survey.root, tmp_path / "a", splits=("train",))
    run_convert(survey.root, tmp_path / "a", splits=("val",))
    train, val = load_manifest(tmp_path / "a" / "train"), load_manifest(tmp_path / "a" / "val")
    assert val.meta_mean == train.meta_mean
    with pytest.raises(DataError, match="train"):
        run_convert(survey.root, tmp_path / "b", splits=("val",))
    run_convert(survey.root, tmp_path / "c", meta_cols=(), splits=("train",))
    assert load_manifest(tmp_path / "c" / "train").meta_columns == []
    batch = next(iter(ShardReader(tmp_path / "c" / "train", batch_size=4)))
    assert batch["meta"].shape == (4, 0)


def test_manifest_json_is_plain_json(converted):
    _, shards = converted
    doc = json.loads((shards / "train" / "manifest.json").read_text())
    assert doc["format"] == "haloscope-shards" and doc["schema_version"] == SCHEMA_VERSION == 2
    assert set(doc["counts"]) >= {
        "lens",
        "control",
        "hard_neg_samples",
        "hard_neg_rows",
        "duplicates_removed",
        "input_rows",
        "accepted_rows",
    }


def test_injection_truth_strata_reach_the_shards_when_present(tmp_path):
    """arc_snr_sum, magnification, ... travel to every sample's table; absent -> NaN."""
    rng = np.random.default_rng(0)
    rows = {
        s: [base_row(i + 100 * k, rng, is_control=i % 2) for i in range(6)]
        for k, s in enumerate(("train", "val", "test"))
    }
    schema = SCHEMA
    for j, name in enumerate(STRATA_COLUMNS):
        schema = schema.append(pa.field(name, pa.float64()))
        for split_rows in rows.values():
            for r in split_rows:
                r[name] = None if r["is_control"] else 1.5 + j
    write_dataset(tmp_path / "d", rows, schema)
    run_convert(tmp_path / "d", tmp_path / "s", min_theta_over_psf=0.0)
    got = _all_samples(tmp_path / "s" / "val")["table"]
    lens = got["label"] == 1
    assert lens.any() and (~lens).any()
    for j, name in enumerate(STRATA_COLUMNS):
        np.testing.assert_array_equal(got[name][lens], np.float32(1.5 + j))
        assert np.isnan(got[name][~lens]).all()
    # the shared fixture's survey has none of these columns: NaN everywhere, no error
    write_dataset(tmp_path / "d2", {s: r for s, r in rows.items()})
    run_convert(tmp_path / "d2", tmp_path / "s2", min_theta_over_psf=0.0)
    assert np.isnan(_all_samples(tmp_path / "s2" / "val")["table"]["magnification"]).all()


@pytest.fixture(scope="module")
def converted_outer_bright(tmp_path_factory):
    """The same survey with the seed's ``--norm-method outer`` and ``--train-min-arc-snr 12.5``
    (its lenses: 12)."""
    root = tmp_path_factory.mktemp("conv_outer")
    survey = make_survey(root)
    run_convert(survey.root, root / "shards", norm_method="outer", train_min_arc_snr=12.5)
    return survey, root / "shards"


def test_outer_stamps_and_lens_cut_in_train_only(converted_outer_bright, converted):
    survey, shards = converted_outer_bright
    plain = load_manifest(converted[1] / "train").counts["accepted_rows"]
    for split in ("train", "val", "test"):
        got = _all_samples(shards / split)
        ids = [t.decode() for t in got["table"]["task_id"]]
        lenses = {t for t in survey.accepted[split] if survey.labels[t] == 1}
        assert lenses, "the fixture must have lenses in every split"
        m = load_manifest(shards / split)
        assert m.norm == norm_settings("outer")
        if split == "train":  # every lens (arc_snr 12 < 12.5) dropped and counted
            assert set(ids) == survey.accepted[split] - lenses
            # input rows, so the fixture's pixel-identical duplicates of a lens count too
            assert m.rejected["below_train_arc_snr"] >= len(lenses)
            assert m.counts["accepted_rows"] == plain - m.rejected["below_train_arc_snr"]
            assert m.preprocess["min_arc_snr"] == 12.5
        else:
            assert set(ids) == survey.accepted[split]
            assert "below_train_arc_snr" not in m.rejected
            assert m.preprocess["min_arc_snr"] == 0.0
        for i, tid in enumerate(ids):
            want = outer_normalize(survey.stamps[tid][None]).astype(np.float16)[0]
            assert got["image"][i].tobytes() == want.tobytes(), tid


def test_asinh_is_linear_in_the_noise_and_never_saturates():
    rng = np.random.default_rng(0)
    stamp = rng.normal(0.0, 1.0, (1, 3, 64, 64)).astype(np.float32)
    stamp[0, :, 32, 32] = [30.0, 300.0, 3000.0]  # a bright core, different per band
    outer, asinh = outer_normalize(stamp)[0], asinh_normalize(stamp)[0]
    noise = np.abs(outer) < 1.0
    np.testing.assert_allclose(asinh[noise], outer[noise], atol=0.04)  # a*asinh(z/a) ~ z
    assert (outer[:, 32, 32] == 10.0).all()  # the seed's clip erases the colour
    core = asinh[:, 32, 32]
    assert core[0] < core[1] < core[2] and core[2] > 15.0  # kept, ordered, not flat
    assert (np.diff(np.sort(asinh.ravel())) >= 0).all()


def test_unknown_norm_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--norm-method must be one of"):
        normalize(np.zeros((1, 3, 64, 64), np.float32), "linear")
