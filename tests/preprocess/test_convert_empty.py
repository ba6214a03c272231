"""Splits without accepted samples: written empty with their counts; readers say so."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import DataError
from haloscope.shards.manifest import load_manifest
from haloscope.shards.read import ShardReader
from haloscope.shards.verify import verify_shards
from tests.preprocess.contract_rows import SCHEMA, base_row, to_table
from tests.shards.shard_fixtures import make_survey, run_convert


def _replace_split(root: Path, split: str, table: pa.Table) -> None:
    part = root / f"region_split={split}"
    for old in part.glob("*.parquet"):
        old.unlink()
    pq.write_table(table, part / "part-00000.parquet")


@pytest.fixture
def empty_splits(tmp_path, caplog):
    """train: rows that every gate rejects (cutout_ok = 0); val: a 0-row parquet; test: fine."""
    survey = make_survey(tmp_path, sizes={"train": 12, "val": 4, "test": 4})
    rng = np.random.default_rng(5)
    rejected = [base_row(500 + i, rng) | {"cutout_ok": 0} for i in range(3)]
    _replace_split(survey.root, "train", to_table(rejected, SCHEMA))
    _replace_split(survey.root, "val", to_table([], SCHEMA))
    with caplog.at_level(logging.WARNING, logger="haloscope"):
        written = run_convert(survey.root, tmp_path / "shards")
    return tmp_path / "shards", written, caplog.text


def test_split_with_no_rows_or_all_rejected_is_written_empty(empty_splits):
    out, written, logged = empty_splits
    assert set(written) == {"train", "val", "test"}
    train, val = load_manifest(out / "train"), load_manifest(out / "val")
    assert train.num_samples == 0 and train.shards == [] and train.counts["input_rows"] == 3
    assert train.rejected == {"cutout_not_ok": 3}
    assert val.num_samples == 0 and val.shards == [] and val.counts["input_rows"] == 0
    assert load_manifest(out / "test").num_samples == 4
    for split in ("train", "val"):
        assert f"{split}: no accepted samples" in logged
        assert not list((out / split).glob("shard-*.tar"))
    assert all(" OK " in line for line in verify_shards(out, ["train", "val", "test"]))


def test_reader_of_an_empty_split_says_so(empty_splits):
    out, _, _ = empty_splits
    for split in ("train", "val"):
        with pytest.raises(DataError, match=f"split {split} has no samples"):
            ShardReader(out / split, batch_size=4, shuffle=False, drop_last=False)
