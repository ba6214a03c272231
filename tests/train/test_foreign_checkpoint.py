"""Files that are not haloscope checkpoints: `infer --ckpt` and `train --resume` say so in one line.

No traceback, and none of torch's advice to load with ``weights_only=False`` (which would run
arbitrary code from the file).
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.train_fixtures import tiny_argv

REPO = Path(__file__).resolve().parents[2]


class Experiment:
    """A user's own class: a torch.save of it needs unpickling code to load."""

    def __init__(self) -> None:
        self.weights = torch.zeros(3)


def _write(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "plain_dict":
        torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)
    elif kind == "custom_class":
        torch.save({"model": Experiment()}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Experiment(), protocol=4))
    elif kind == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    return path


# what the one line must say, beyond naming the file
_REASON = {
    "plain_dict": "not a haloscope",
    "custom_class": "Experiment",
    "pickle": "not a torch checkpoint",
    "random_bytes": "not a torch checkpoint",
    "empty": "empty",
}


def _haloscope(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "haloscope", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _assert_one_line(proc: subprocess.CompletedProcess, verb: str, path: Path, kind: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"haloscope {verb}: error: checkpoint {path}"), proc.stderr
    assert _REASON[kind] in errors[0], proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr  # torch's pickle-protocol warning


@pytest.mark.parametrize("kind", ["plain_dict", "custom_class", "random_bytes", "empty"])
def test_infer_refuses_a_foreign_checkpoint_in_one_line(tmp_path: Path, kind: str) -> None:
    ckpt = _write(tmp_path / "run" / "best.pt", kind)
    out = tmp_path / "scores.parquet"
    proc = _haloscope("infer", "--ckpt", str(ckpt), "--data", str(tmp_path / "data"),
                      "--out", str(out), "--device", "cpu")  # fmt: skip
    _assert_one_line(proc, "infer", ckpt, kind)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["pickle", "random_bytes"])
def test_resume_refuses_a_foreign_last_pt_in_one_line(
    tiny_shards: Path, tmp_path: Path, kind: str
) -> None:
    run = tmp_path / "run"
    last = _write(run / "last.pt", kind)
    proc = _haloscope("train", *tiny_argv(tiny_shards, run, "--resume"))
    _assert_one_line(proc, "train", last, kind)
