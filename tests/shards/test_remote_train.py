"""``haloscope train`` (a real subprocess) from shards served over HTTP and S3 on 127.0.0.1
ends with the weights of the same run from the local folder, also after a SIGKILL and
``--resume`` mid-epoch over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.shards.remote_servers import FAST_RETRIES, Faults, http_server, s3_server, upload_tree
from tests.train.train_fixtures import make_shards, tiny_argv

# one epoch of 6 steps (96 train samples, batch 16); dropout, drop-path and D4 augmentation on
_EXTRA = ("--epochs", "1", "--ckpt-every-steps", "2")


def _cmd(shards: str | Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "haloscope", "train", *tiny_argv(shards, run, *_EXTRA, *extra)]


def _train(shards: str | Path, run: Path, *extra: str) -> None:
    proc = subprocess.run(
        _cmd(shards, run, *extra),
        capture_output=True,
        text=True,
        env={**os.environ, **FAST_RETRIES},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key, value in wa.items():
        assert torch.equal(value, wb[key]), key


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(shard root, the run trained from it locally)."""
    tmp = tmp_path_factory.mktemp("remote_train")
    root = make_shards(tmp / "shards")
    _train(root, tmp / "local")
    return root, tmp / "local"


def test_train_over_http_equals_local(local_run: tuple[Path, Path], tmp_path: Path) -> None:
    root, local = local_run
    with http_server(root) as (url, faults):
        _train(url, tmp_path / "http", "--num-workers", "1")  # records by range requests
    assert any(r[2] for r in faults.requests if r[1].endswith(".tar"))
    _assert_same_weights(local, tmp_path / "http")


def test_train_from_s3_with_cache_equals_local(
    local_run: tuple[Path, Path], tmp_path: Path
) -> None:
    root, local = local_run
    with s3_server():
        upload_tree(root, "lenses", "shards")
        _train("s3://lenses/shards", tmp_path / "s3", "--cache-dir", str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("??/*.tar"))) == 4  # 2 train + 2 val shards
    _assert_same_weights(local, tmp_path / "s3")


def test_sigkill_and_resume_over_http_equals_local(
    local_run: tuple[Path, Path], tmp_path: Path
) -> None:
    root, local = local_run
    run = tmp_path / "killed"
    with http_server(root, Faults(delay_s=0.3)) as (url, _):  # slow enough to kill mid-epoch
        proc = subprocess.Popen(
            _cmd(url, run),
            env={**os.environ, **FAST_RETRIES},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 600
        while not (run / "last.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before its first checkpoint"
        proc.kill()
        proc.wait()
        proc.stderr.close()
        progress = torch.load(run / "last.pt", weights_only=True)["progress"]
        assert progress["epoch"] == 0 and 0 < progress["step_in_epoch"] < 6  # mid-epoch
        _train(url, run, "--resume")
    _assert_same_weights(local, run)
