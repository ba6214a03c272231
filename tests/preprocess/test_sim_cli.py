"""`haloscope simulate` as a user runs it: a small survey, and one-line errors for bad flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.dataset as ds
import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_a_readable_survey(tmp_path):
    out = tmp_path / "mock"
    proc = _run(
        "--out", str(out), "--rows", "2000", "--workers", "2", "--no-progress", "--seed", "4"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 2000 and set(summary["rows_per_split"]) == {"train", "val", "test"}
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table(
        columns=["is_control", "region_split"]
    )
    assert table.num_rows == 2000
    again = _run("--out", str(out), "--rows", "10", "--no-progress")
    assert (
        again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    )


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--rows", "-5"], "--rows"),
        (["--rows", "100", "--control-frac", "1.5"], "--control-frac"),
        (["--rows", "100", "--compression", "lz5"], "--compression"),
        (["--rows", "100", "--split_fracs", "0.5,0.5,0.5"], "--split-fracs"),
        (["--rows", "100", "--workers", "zero"], "--workers"),
    ],
)
def test_bad_flag_value_gives_one_clear_line(tmp_path, args, flag):
    proc = _run("--out", str(tmp_path / "x"), *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert flag.split("-")[-1] in last and "error" in last
