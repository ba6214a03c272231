"""Under torchrun (3 gloo ranks on CPU): equal batch counts, disjoint ranks covering the epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from haloscope.shards.manifest import load_manifest
from tests.shards.shard_fixtures import HN_WEIGHT, make_survey, run_convert

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    survey = make_survey(root, sizes={"train": 200, "val": 61, "test": 3})
    run_convert(
        survey.root,
        root / "shards",
        hard_neg_path=survey.lookup,
        hard_neg_weight=HN_WEIGHT,
        splits=("train", "val"),
    )
    return root / "shards"


def _torchrun(split_dir: Path, out: Path, mode: str) -> list[dict]:
    out.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node",
        "3",
        str(Path(__file__).with_name("dist_reader_rank.py")),
        str(split_dir),
        str(out),
        mode,
    ]
    # own process group, so a hang cannot leave rank processes behind
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(3)]


@pytest.mark.dist
def test_torchrun_training_epoch_is_balanced_and_disjoint(shards, tmp_path):
    ranks = _torchrun(shards / "train", tmp_path / "train", "train")
    n = load_manifest(shards / "train").num_samples
    bpr = n // (3 * 8)
    assert all(r["batches"] == r["batches_per_rank"] == bpr for r in ranks)
    assert ranks[0]["all_counts"] == [bpr] * 3
    keys = [tuple(k) for r in ranks for k in r["keys"]]
    assert len(keys) == len(set(keys)) == bpr * 3 * 8  # disjoint; only N mod 24 left over


@pytest.mark.dist
def test_torchrun_eval_covers_every_sample_exactly_once(shards, tmp_path):
    ranks = _torchrun(shards / "val", tmp_path / "val", "eval")
    n = load_manifest(shards / "val").num_samples
    assert len({r["batches"] for r in ranks}) == 1
    keys = [tuple(k) for r in ranks for k in r["keys"]]
    assert len(keys) == len(set(keys)) == n
