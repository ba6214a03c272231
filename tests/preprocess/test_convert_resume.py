"""Converter determinism: same bytes for any --workers / --num-tasks, after a kill, after damage."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.shards.shard_fixtures import HN_WEIGHT, make_survey, run_convert

HALOSCOPE = Path(sys.executable).parent / "haloscope"


def _fingerprint(out: Path) -> dict[str, str]:
    """sha256 of every shard (from the manifests, re-checked on disk by the next step)."""
    got = {}
    for split in ("train", "val", "test"):
        doc = json.loads((out / split / "manifest.json").read_text())
        for s in doc["shards"]:
            data = (out / split / s["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s["sha256"]
            got[f"{split}/{s['file']}"] = s["sha256"]
    return got


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return make_survey(root, sizes={"train": 240, "val": 30, "test": 20})


@pytest.fixture(scope="module")
def reference(survey, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("ref") / "shards"
    run_convert(survey.root, out, hard_neg_path=survey.lookup, hard_neg_weight=HN_WEIGHT)
    return _fingerprint(out)


def test_same_bytes_with_two_workers(survey, reference, tmp_path):
    run_convert(
        survey.root,
        tmp_path / "s",
        hard_neg_path=survey.lookup,
        hard_neg_weight=HN_WEIGHT,
        workers=2,
    )
    assert _fingerprint(tmp_path / "s") == reference


def test_same_bytes_with_tasks_run_stage_by_stage(survey, reference, tmp_path):
    common = {"hard_neg_path": survey.lookup, "hard_neg_weight": HN_WEIGHT, "num_tasks": 2}
    out = tmp_path / "s"
    for stage in ("pass1", "pass2"):
        for task in (1, 0):
            assert run_convert(survey.root, out, stage=stage, task_index=task, **common) == {}
    assert not (out / "train" / "manifest.json").exists()
    written = run_convert(survey.root, out, stage="manifest", **common)
    assert set(written) == {"train", "val", "test"}
    assert _fingerprint(out) == reference


def test_killed_conversion_resumes_to_identical_bytes(survey, reference, tmp_path):
    out = tmp_path / "s"
    cmd = [
        str(HALOSCOPE),
        "shards",
        "--data",
        str(survey.root),
        "--out",
        str(out),
        "--hard-neg-path",
        str(survey.lookup),
        "--hard-neg-weight",
        str(HN_WEIGHT),
        "--shard-samples",
        "64",
        "--record-samples",
        "16",
        "--batch-rows",
        "32",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_part = out / "_work" / "train" / "p1-00000.json"
    deadline = time.monotonic() + 60
    while not first_part.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "test" / "manifest.json").exists(), "killed too late to test resuming"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _fingerprint(out) == reference
    assert not list(out.rglob(".*tmp*")), "temporary files left behind"


def test_damaged_outputs_are_rebuilt_identically(survey, reference, tmp_path):
    out = tmp_path / "s"
    kw = {"hard_neg_path": survey.lookup, "hard_neg_weight": HN_WEIGHT, "keep_work": True}
    run_convert(survey.root, out, **kw)
    shards = sorted((out / "train").glob("shard-*.tar"))
    shards[0].unlink()  # a lost shard
    data = bytearray(shards[1].read_bytes())
    data[2000] ^= 1  # a silently corrupted one: only its sha256 tells
    shards[1].write_bytes(bytes(data))
    next((out / "_work" / "val").glob("p2-*.json")).unlink()  # a lost part record
    (out / "val" / "manifest.json").unlink()
    written = run_convert(survey.root, out, **kw)
    assert set(written) == {"train", "val", "test"}
    assert _fingerprint(out) == reference


def test_new_settings_replace_old_shards(survey, tmp_path):
    out = tmp_path / "s"
    run_convert(survey.root, out, shard_samples=32)
    many = sorted(p.name for p in (out / "train").glob("shard-*.tar"))
    run_convert(survey.root, out, shard_samples=128)
    doc = json.loads((out / "train" / "manifest.json").read_text())
    left = sorted(p.name for p in (out / "train").glob("shard-*.tar"))
    assert len(left) < len(many) and left == sorted(s["file"] for s in doc["shards"])
