"""Shards and raw parquet give bit-identical scores tables; mismatched shards are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from haloscope.infer.sources import iter_parquet_batches, iter_shard_batches
from haloscope.preprocess.schema import split_files
from haloscope.shards.manifest import load_manifest
from haloscope.shards.read import ShardReader
from tests.infer.infer_fixtures import (
    META_COLS,
    assert_tables_identical,
    make_checkpoint,
    make_dataset,
)


def _haloscope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("infer_shards")
    make_dataset(root / "data", num_rows=45)
    make_checkpoint(root / "gen3" / "best.pt")
    proc = _haloscope(
        "shards",
        "--data",
        str(root / "data"),
        "--out",
        str(root / "shards"),
        "--workers",
        "1",
        "--record-samples",
        "16",
        "--shard-samples",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    return root


def _score(world: Path, source: list[str], name: str, batch_size: int):
    proc = _haloscope("infer", "--ckpt", str(world / "gen3" / "best.pt"), "--split", "test",
                      "--batch-size", str(batch_size), "--no-progress", "--num-workers", "0",
                      "--out", str(world / name), *source)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return pq.read_table(world / name)


def test_parquet_and_shards_feed_the_model_identical_inputs(world):
    def by_task(batches):
        out = {}
        for b in batches:
            for i, task in enumerate(b.columns["task_id"]):
                out[task] = (b.images[i].tobytes(), b.meta[i].tobytes())
        return out

    files = split_files(world / "data", "test")
    method = load_manifest(world / "shards" / "test").norm["method"]
    parquet = by_task(
        iter_parquet_batches(
            files, meta_cols=META_COLS, min_theta_over_psf=0.5, batch_size=32, norm_method=method
        )
    )
    reader = ShardReader(
        world / "shards" / "test", batch_size=32, shuffle=False, drop_last=False, with_table=True
    )
    shards = by_task(iter_shard_batches(iter(reader)))
    assert len(parquet) == 43 and parquet == shards  # float16 stamps and meta, bit for bit


def test_parquet_and_shards_give_identical_scores(world):
    # batch size 1: CPU convolutions are not batch-invariant in the last bit, and the two
    # sources batch different rows together (the shards are shuffled)
    from_parquet = _score(world, ["--data", str(world / "data")], "p1.parquet", 1)
    from_shards = _score(world, ["--shards", str(world / "shards")], "s1.parquet", 1)
    assert from_parquet.num_rows == 43  # 45 rows - cutout_ok=0 - one unresolved lens
    assert_tables_identical(from_parquet, from_shards)


def test_parquet_and_shards_agree_at_a_real_batch_size(world):
    a = _score(world, ["--data", str(world / "data")], "p24.parquet", 24)
    b = _score(world, ["--shards", str(world / "shards")], "s24.parquet", 24)
    assert_tables_identical(a.drop_columns(["logit", "score"]), b.drop_columns(["logit", "score"]))
    np.testing.assert_allclose(
        a.column("logit").to_numpy(), b.column("logit").to_numpy(), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    ("flags", "setting"),
    [
        (["--meta-cols", "psfsize_r"], "meta_columns"),
        (["--min-theta-over-psf", "0.3"], "min_theta_over_psf"),
    ],
)
def test_shards_made_with_other_settings_are_refused(world, tmp_path, flags, setting):
    shards = tmp_path / "other"
    proc = _haloscope("shards", "--data", str(world / "data"), "--out", str(shards),
                      "--splits", "train,test", "--workers", "1", *flags)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = _haloscope("infer", "--ckpt", str(world / "gen3" / "best.pt"), "--shards", str(shards),
                      "--out", str(tmp_path / "s.parquet"))  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert setting in proc.stderr and "best.pt" in proc.stderr
    assert not (tmp_path / "s.parquet").exists()
