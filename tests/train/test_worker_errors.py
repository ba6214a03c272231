"""A loader worker that hits bad data: one line, and the process exits instead of hanging.

torch re-raises a worker's exception as ``type(exc)("Caught ... Original Traceback ...")``
(the worker's traceback in the message), and the reference cycle of that re-raise kept the
DataLoader iterator, and so its workers, alive; the workers block SIGTERM (``start_batches``),
so at exit ``multiprocessing`` waited for them forever.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.train.train_fixtures import make_shards, tiny_argv

REPO = Path(__file__).resolve().parents[2]


def damage(path: Path) -> None:
    """Zero a file after its first KiB, keeping its size (passes the size checks)."""
    data = bytearray(path.read_bytes())
    data[1024:] = bytes(len(data) - 1024)
    path.write_bytes(bytes(data))


def test_bad_shard_in_a_loader_worker_is_one_line(tmp_path: Path) -> None:
    root = make_shards(tmp_path / "shards", num_train=32, num_val=32)
    shard = root / "train" / "shard-000001.tar"
    damage(shard)
    argv = tiny_argv(root, tmp_path / "run", "--epochs", "1", "--num-workers", "1")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "train", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "worker process" not in proc.stderr, proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if "error" in x.lower()]
    assert line.startswith(f"haloscope train: error: {shard}: "), line
