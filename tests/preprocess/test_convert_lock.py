"""Concurrent conversions into one --out: an exclusive lock, array tasks side by side, --verify."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haloscope.errors import HaloscopeError, OutputBusyError
from haloscope.shards.lock import lock_output
from tests.shards.shard_fixtures import make_survey

HALOSCOPE = Path(sys.executable).parent / "haloscope"
SMALL = ["--shard-samples", "64", "--record-samples", "16"]


def _cmd(survey, out: Path, *extra: str) -> list[str]:
    return [str(HALOSCOPE), "shards", "--data", str(survey.root), "--out", str(out), *SMALL, *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess, alone: bool = True) -> str:
    """The one error line; ``alone``: nothing else on stderr (no progress bar either)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    if not alone:
        lines = [line for line in lines if "haloscope shards: error" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def survey(tmp_path):
    return make_survey(tmp_path, sizes={"train": 20, "val": 6, "test": 6})


def test_second_writer_is_refused_while_array_tasks_share_the_out(survey, tmp_path):
    out = tmp_path / "shards"
    # task 0 of 2 does its pass 1, then waits (holding its locks) for task 1's parts
    task0 = subprocess.Popen(
        _cmd(survey, out, "--num-tasks", "2", "--task-index", "0", "--wait-timeout-s", "60"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "_work" / "val" / "p1-00000.json").exists():
            assert task0.poll() is None and time.monotonic() < deadline, "task 0 did not start"
            time.sleep(0.05)
        line = _one_error_line(_run(_cmd(survey, out)))  # a whole conversion: refused
        assert str(out) in line and "in use" in line and "task 0 of 2" in line
        line = _one_error_line(_run(_cmd(survey, out, "--num-tasks", "2", "--task-index", "0")))
        assert str(out) in line and f"pid {task0.pid}" in line  # a second copy of task 0
        task1 = _run(_cmd(survey, out, "--num-tasks", "2", "--task-index", "1"))
        assert task1.returncode == 0, task1.stderr  # tasks of one array run side by side
        assert task0.wait(timeout=60) == 0, task0.stderr.read()
    finally:
        task0.kill()
        task0.wait()
    assert all((out / s / "manifest.json").is_file() for s in ("train", "val", "test"))
    verify = _run([str(HALOSCOPE), "shards", "--verify", "--out", str(out)])
    assert verify.returncode == 0 and verify.stdout.count("OK") == 3, verify.stderr


def test_refusal_names_the_pid_of_a_whole_conversion(survey, tmp_path):
    out = tmp_path / "shards"
    with lock_output(out, task_index=0, num_tasks=1):
        line = _one_error_line(_run(_cmd(survey, out)))
    assert str(out) in line and f"pid {os.getpid()}" in line
    assert not (out / "_work").exists()


def test_a_busy_output_raises_the_haloscope_error(tmp_path):
    out = tmp_path / "shards"
    with lock_output(out, task_index=0, num_tasks=1):
        with pytest.raises(OutputBusyError, match="output folder in use") as err:
            with lock_output(out, task_index=0, num_tasks=1):
                pass
    assert isinstance(err.value, HaloscopeError)  # the CLI prints it as one line, exit 2


def test_verify_checks_the_zarr_store(survey, tmp_path):
    out = tmp_path / "shards"
    assert _run(_cmd(survey, out)).returncode == 0
    (out / "val" / "stamps.zarr" / "meta" / "zarr.json").unlink()
    verify = _run([str(HALOSCOPE), "shards", "--verify", "--out", str(out)])
    line = _one_error_line(verify, alone=False)
    assert "stamps.zarr" in line and "meta" in line
    again = _run(_cmd(survey, out))  # not "up to date": the store is rebuilt
    assert again.returncode == 0 and "up to date" not in again.stderr, again.stderr
    verify = _run([str(HALOSCOPE), "shards", "--verify", "--out", str(out)])
    assert verify.returncode == 0 and verify.stdout.count("OK") == 3, verify.stderr
