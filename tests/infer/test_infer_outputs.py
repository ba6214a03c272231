"""`haloscope infer --out` somewhere it cannot write: one line naming the path, no partial file.

As in ``tests/train/test_unwritable_run.py``: as root (where ``chmod 0o555`` does not stop
writes) the unwritable folder is a path under a regular FILE (NotADirectoryError), otherwise
a read-only folder; a full disk is stood in for by ``RLIMIT_FSIZE`` (binds root too; SIGXFSZ
ignored, so the write fails with EFBIG).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infer.infer_fixtures import make_checkpoint, make_dataset
from tests.output_faults import limit_file_size, unwritable_out

REPO = Path(__file__).resolve().parents[2]
_FSIZE_LIMIT = 2048  # bytes: less than the 46-row scores parquet


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("infer_outputs")
    make_dataset(root / "data", num_rows=48)
    make_checkpoint(root / "gen3" / "best.pt")
    return root


def _infer(workdir: Path, out: Path, **kwargs) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "infer", "--ckpt", str(workdir / "gen3" / "best.pt"),
         "--data", str(workdir / "data"), "--split", "test", "--out", str(out),
         "--batch-size", "16", "--num-workers", "0", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300, **kwargs,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_out_folder_that_cannot_be_created(workdir: Path, tmp_path: Path) -> None:
    out = unwritable_out(tmp_path) / "scores.parquet"
    line = _infer(workdir, out)
    assert line.startswith(f"haloscope infer: error: {out.parent}"), line
    assert "Not a directory" in line or "Permission denied" in line, line


def test_out_that_is_a_folder_fails_before_scoring(workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    out.mkdir()
    line = _infer(workdir, out)
    assert line == f"haloscope infer: error: {out}: Is a directory", line
    assert list(out.iterdir()) == []


def test_full_disk_leaves_no_partial_scores(workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores" / "test.parquet"
    line = _infer(workdir, out, preexec_fn=limit_file_size(_FSIZE_LIMIT))
    assert line.startswith(f"haloscope infer: error: {out}: "), line
    assert "File too large" in line, line
    assert list(out.parent.iterdir()) == []
