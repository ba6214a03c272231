"""The webdataset pipeline (``shards/wds.py``) reads the samples ``ShardReader`` reads, from a
folder and over HTTP, one decoded sample at a time, and takes the user's own stages."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from haloscope.errors import DataError
from haloscope.shards.read import ShardReader
from haloscope.shards.wds import pipeline
from tests.shards.remote_servers import FAST_RETRIES, http_server
from tests.train.train_fixtures import make_split


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 samples in 3 shards of records of 16 (the last record of each shard is short)."""
    split_dir = tmp_path_factory.mktemp("wds") / "val"
    make_split(split_dir, 50, 7, split="val", num_shards=3)
    return split_dir


def _reader_samples(split_dir: Path) -> list[tuple]:
    reader = ShardReader(split_dir, batch_size=8, shuffle=False, drop_last=False, with_table=True)
    out = []
    for b in reader:
        for i in np.flatnonzero(b["valid"].numpy()):
            row = b["table"][i]
            out.append(
                (
                    row["task_id"].decode(),
                    int(row["label"]),
                    b["image"][i].numpy().tobytes(),
                    b["meta"][i].numpy().tobytes(),
                    float(row["ra"]),
                )
            )
    return out


def _wds_samples(ds) -> list[tuple]:
    return [
        (s["ids"]["task_id"], s["label"], s["image"].tobytes(), s["meta"].tobytes(), s["ids"]["ra"])
        for s in ds
    ]


def test_pipeline_reads_what_the_reader_reads(split: Path, tmp_path: Path) -> None:
    want = _reader_samples(split)
    assert len(want) == 50
    first = next(iter(pipeline(split)))
    assert first["image"].shape == (3, 64, 64) and first["image"].dtype == np.float16
    assert first["meta"].shape == (2,) and first["meta"].dtype == np.float32
    assert set(first["ids"]) == {"task_id", "brickname", "ra", "dec"}
    assert _wds_samples(pipeline(split)) == want  # manifest order, every sample once
    with http_server(split.parent) as (url, _):
        assert _wds_samples(pipeline(f"{url}/val")) == want
        assert _wds_samples(pipeline(f"{url}/val", cache_dir=tmp_path / "cache")) == want
    assert len(list((tmp_path / "cache").glob("??/*.tar"))) == 3


def test_user_stages_compose(split: Path) -> None:
    ds = pipeline(split)
    ds.append(wds.shuffle(20, rng=random.Random(0)))
    ds.append(wds.to_tuple("image", "label"))
    ds.append(wds.batched(16, partial=True))
    batches = list(ds)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    labels = sorted(int(x) for b in batches for x in b[1])
    assert labels == sorted(s[1] for s in _reader_samples(split))


def test_missing_manifest_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no manifest"):
        pipeline(tmp_path)
