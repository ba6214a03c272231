"""A search killed (SIGKILL) mid-run and re-run with the same flags finishes with the same
candidates as an uninterrupted run, re-scoring no finished chunk; another search's --out is
refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.infer.infer_fixtures import assert_tables_identical
from tests.search.search_fixtures import make_checkpoint, unlabelled_table, write_parquet

NUM_CHUNKS = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    table, _ = unlabelled_table(4 * NUM_CHUNKS)
    data = write_parquet(table, tmp / "in" / "cutouts.parquet", row_group_rows=4)
    ckpt = make_checkpoint(tmp / "run" / "best.pt")
    return tmp, data, ckpt


def _argv(data, ckpt, out) -> list[str]:
    return [sys.executable, "-m", "haloscope", "search", "--input", str(data), "--ckpt",
            str(ckpt), "--out", str(out), "--batch-size", "4", "--num-workers", "0",
            "--device", "cpu", "--no-progress"]  # fmt: skip


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


def _snapshot(parts) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("part-*")}


def test_sigkill_then_rerun_gives_the_same_candidates(setup):
    tmp, data, ckpt = setup
    ref = _run(_argv(data, ckpt, tmp / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _argv(data, ckpt, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((out / "parts").glob("part-*"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _snapshot(out / "parts")
    assert 2 <= len(before) < NUM_CHUNKS, "the search was not killed mid-run"
    assert not (out / "candidates.parquet").exists()
    (out / "parts" / ".part-00000-0000099.parquet.x1.tmp").write_bytes(b"half")  # a torn write
    again = _run(_argv(data, ckpt, out))
    assert again.returncode == 0, again.stderr
    after = _snapshot(out / "parts")
    assert len(after) == NUM_CHUNKS and all(after[n] == v for n, v in before.items())
    assert not [p for p in (out / "parts").iterdir() if p.name.startswith(".")]
    got = pq.read_table(out / "candidates.parquet")
    assert_tables_identical(got, pq.read_table(tmp / "ref" / "candidates.parquet"))
    ids = got.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 4 * NUM_CHUNKS
    assert (
        f"{NUM_CHUNKS} chunks" in again.stderr and f"{len(before)} already finished" in again.stderr
    )


def test_other_checkpoint_in_the_same_out_is_refused(setup):
    tmp, data, ckpt = setup
    other = make_checkpoint(tmp / "run2" / "best.pt", seed=1)
    res = _run(_argv(data, other, tmp / "ref"))  # ref: a finished search of `ckpt`
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a search of other checkpoints" in lines[0], res.stderr
