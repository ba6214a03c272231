"""ShardReader: exact epochs, rank/worker splits, seeded order, resume, padding, bad shards."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from haloscope.errors import ConfigError, DataError
from haloscope.shards.manifest import check_compatible, load_manifest
from haloscope.shards.read import ShardReader, build_loader
from tests.shards.shard_fixtures import HN_WEIGHT, make_survey, run_convert


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("read")
    survey = make_survey(root, sizes={"train": 300, "val": 50, "test": 20})
    run_convert(
        survey.root, root / "shards", hard_neg_path=survey.lookup, hard_neg_weight=HN_WEIGHT
    )
    return root / "shards"


def _keys(batches) -> list[tuple[bytes, int]]:
    """(task_id, copy) of every valid sample, in yield order."""
    out = []
    for b in batches:
        t = b["table"][b["valid"].numpy()]
        out.extend(zip(t["task_id"].tolist(), t["copy"].tolist(), strict=False))
    return out


def _epoch(split_dir, epoch=0, workers=0, **kw) -> list[tuple[bytes, int]]:
    reader = ShardReader(split_dir, with_table=True, **kw)
    reader.set_epoch(epoch)
    return _keys(build_loader(reader, num_workers=workers))


def test_every_sample_exactly_once_per_epoch(shards):
    m = load_manifest(shards / "train")
    keys = _epoch(shards / "train", batch_size=16, shuffle=True, drop_last=False)
    assert len(keys) == m.num_samples == len(set(keys))
    copies = Counter(k[0] for k in keys)
    assert sum(1 for n in copies.values() if n == HN_WEIGHT) == m.counts["hard_neg_rows"]


def test_drop_last_drops_only_the_remainder_and_it_varies(shards):
    n = load_manifest(shards / "train").num_samples
    e0 = _epoch(shards / "train", 0, batch_size=32)
    e1 = _epoch(shards / "train", 1, batch_size=32)
    assert len(e0) == len(e1) == (n // 32) * 32 and len(set(e0)) == len(e0)
    assert set(e0) != set(e1), "the dropped leftovers should differ between epochs"


def test_order_is_a_function_of_seed_and_epoch_not_workers(shards):
    a = _epoch(shards / "train", 3, batch_size=16, seed=7)
    assert a == _epoch(shards / "train", 3, batch_size=16, seed=7, workers=2)
    assert a != _epoch(shards / "train", 4, batch_size=16, seed=7)
    assert a != _epoch(shards / "train", 3, batch_size=16, seed=8)
    assert a[:16] != _epoch(shards / "train", 3, batch_size=16, seed=7, shuffle=False)[:16]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_remaining_batches(shards, workers):
    full = ShardReader(shards / "train", batch_size=16, seed=3, with_table=True)
    full.set_epoch(2)
    want = [_keys([b]) for b in build_loader(full, num_workers=workers)]
    reader = ShardReader(shards / "train", batch_size=16, seed=3, with_table=True)
    reader.set_epoch(2)
    it = iter(build_loader(reader, num_workers=workers))
    head = [_keys([next(it)]) for _ in range(5)]
    state = json.loads(json.dumps(reader.state_dict()))  # survives a checkpoint round trip
    del it
    assert state["batches_consumed"] == 5 and state["epoch"] == 2
    resumed = ShardReader(shards / "train", batch_size=16, seed=3, with_table=True)
    resumed.load_state_dict(state)
    assert resumed.start_batch == 5
    loader = build_loader(resumed, num_workers=workers)
    assert len(loader) == resumed.batches_per_rank() - 5
    tail = [_keys([b]) for b in loader]
    assert head + tail == want
    assert resumed.start_batch == 0 and resumed.state_dict()["batches_consumed"] == len(want)
    with pytest.raises(ConfigError, match="batch_size"):
        ShardReader(shards / "train", batch_size=8, seed=3).load_state_dict(state)
    n = state["num_samples"]  # a setting that is no reader attribute: read from state_dict()
    with pytest.raises(ConfigError, match=f"num_samples={n + 1} but this reader has {n};"):
        resumed.load_state_dict(state | {"num_samples": n + 1})


@pytest.mark.parametrize("world", [2, 3])
def test_eval_mode_ranks_cover_split_once_with_equal_batches(shards, world):
    m = load_manifest(shards / "val")
    per_rank, counts = [], set()
    for rank in range(world):
        r = ShardReader(
            shards / "val",
            batch_size=8,
            shuffle=False,
            drop_last=False,
            rank=rank,
            world_size=world,
            with_table=True,
        )
        batches = list(r)
        counts.add(len(batches))
        assert len(batches) == r.batches_per_rank()
        per_rank.append(_keys(batches))
        pad = np.concatenate([~b["valid"].numpy() for b in batches])
        assert pad.sum() == len(batches) * 8 - len(per_rank[-1])
    assert len(counts) == 1
    flat = [k for keys in per_rank for k in keys]
    assert len(flat) == m.num_samples == len(set(flat))
    manifest_order = _epoch(shards / "val", batch_size=5, shuffle=False, drop_last=False)
    assert flat == manifest_order


def test_batch_fields_and_dtypes(shards):
    m = load_manifest(shards / "train")
    b = next(iter(ShardReader(shards / "train", batch_size=8)))
    assert b["image"].dtype.is_floating_point and str(b["image"].dtype) == "torch.float16"
    assert tuple(b["image"].shape) == (8, 3, 64, 64)
    assert str(b["label"].dtype) == "torch.float32" and tuple(b["meta"].shape) == (
        8,
        len(m.meta_columns),
    )
    assert b["valid"].all() and "table" not in b


def _copy_split(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_shard_is_a_clear_error(shards, tmp_path):
    split = _copy_split(shards / "train", tmp_path / "train")
    victim = split / load_manifest(split).shards[0]["file"]
    victim.write_bytes(victim.read_bytes()[:5000])
    with pytest.raises(DataError, match=f"{victim.name}.*truncated"):
        ShardReader(split, batch_size=8)


def test_corrupt_shard_bytes_are_a_clear_error(shards, tmp_path):
    split = _copy_split(shards / "train", tmp_path / "train")
    m = load_manifest(split)
    victim = split / m.shards[0]["file"]
    data = bytearray(victim.read_bytes())
    data[512 * 3 + 100] ^= 0xFF  # inside the first image member's data: only sha256 sees it
    data[0] ^= 0xFF  # first tar header: its checksum fails
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{victim.name}.*corrupt tar header"):
        list(ShardReader(split, batch_size=8, shuffle=False))
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert len(list(ShardReader(split, batch_size=8, shuffle=False))) > 0
    with pytest.raises(DataError, match=f"{victim.name}.*sha256"):
        list(ShardReader(split, batch_size=8, shuffle=False, verify=True))
    out = subprocess.run(
        [".venv/bin/haloscope", "shards", "--verify", "--out", str(tmp_path), "--splits", "train"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "sha256" in out.stderr and "Traceback" not in out.stderr


def test_manifest_that_disagrees_with_shards_is_a_clear_error(shards, tmp_path):
    split = _copy_split(shards / "train", tmp_path / "train")
    doc = json.loads((split / "manifest.json").read_text())
    doc["shards"][0]["records"][0] -= 1
    doc["shards"][0]["num_samples"] -= 1
    doc["num_samples"] -= 1
    (split / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="manifest says"):
        list(ShardReader(split, batch_size=8, shuffle=False))
    doc["num_samples"] += 5
    (split / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="manifest.json"):
        ShardReader(split, batch_size=8)
    (split / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest"):
        ShardReader(split, batch_size=8)


def test_manifest_must_match_the_model_config(shards):
    m = load_manifest(shards / "train")
    check_compatible(m, {"norm_method": "asinh", "meta_columns": ["psfsize_r", "psfdepth_r"]})
    with pytest.raises(DataError, match="meta_columns"):
        check_compatible(m, {"meta_columns": ["psfsize_r"]})
    with pytest.raises(DataError, match="min_theta_over_psf"):
        check_compatible(m, {"min_theta_over_psf": 0.8})


def test_too_few_samples_for_one_batch_per_rank(shards):
    with pytest.raises(ConfigError, match="fewer than"):
        ShardReader(shards / "test", batch_size=64, world_size=2, rank=0)


def test_shards_readable_by_webdataset_and_tar(shards):
    m = load_manifest(shards / "train")
    urls = [str(p) for p in m.shard_paths()]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode():
        n += len(sample["table.npy"])
        assert sample["image.npy"].shape[1:] == (3, 64, 64)
        assert sample["meta.npy"].shape == (len(sample["table.npy"]), 2)
    assert n == m.num_samples
    listing = subprocess.run(["tar", "-tf", urls[0]], capture_output=True, text=True, check=True)
    names = listing.stdout.split()
    assert names == sorted(names) and names[:3] == [
        "r000000.image.npy",
        "r000000.meta.npy",
        "r000000.table.npy",
    ]
