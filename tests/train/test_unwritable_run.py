"""`haloscope train` into an output it cannot write: one line naming the path, nothing half-written.

Two ways to be unwritable:

- a run folder that cannot be created. Tests often run as root, where ``chmod 0o555`` does
  not stop writes, so as root the run folder's parent is a regular FILE (NotADirectoryError);
  otherwise it is a read-only folder (PermissionError).
- a full disk, stood in for by a file-size limit (``RLIMIT_FSIZE``, which binds root too, with
  SIGXFSZ ignored so a write fails with EFBIG instead of killing the process): the small
  metrics files fit, the checkpoint does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.output_faults import limit_file_size, unwritable_out
from tests.train.train_fixtures import tiny_argv

REPO = Path(__file__).resolve().parents[2]
_FSIZE_LIMIT = 256 * 1024  # bytes: metrics and config fit, a convnext_atto checkpoint does not


def _train(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "haloscope", "train", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_run_folder_that_cannot_be_created(tiny_shards: Path, tmp_path: Path) -> None:
    run = unwritable_out(tmp_path)
    line = _one_error_line(_train(tiny_argv(tiny_shards, run)))
    assert line.startswith(f"haloscope train: error: {run}"), line
    assert "Not a directory" in line or "Permission denied" in line, line


def test_full_disk_leaves_no_half_checkpoint(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = tiny_argv(tiny_shards, run, "--epochs", "1", "--max-steps-per-epoch", "1")
    line = _one_error_line(_train(argv, preexec_fn=limit_file_size(_FSIZE_LIMIT)))
    assert line.startswith(f"haloscope train: error: {run / 'last.pt'}: "), line
    assert "File too large" in line, line
    left = sorted(p.name for p in run.iterdir())
    assert not [name for name in left if name.endswith(".pt") or name.endswith(".tmp")], left
