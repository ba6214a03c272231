"""`haloscope search --input URL`: an unlabelled shard split served over HTTP (a real server
on 127.0.0.1) scores exactly as the same split read locally, each shard downloaded once into
the cache, a re-run resumes, and every failure is one line."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from haloscope.cli import main as haloscope
from tests.infer.infer_fixtures import assert_tables_identical
from tests.search.search_fixtures import (
    error_line,
    free_port,
    make_checkpoint,
    search,
    search_here,
    unlabelled_table,
    write_parquet,
)
from tests.shards.remote_servers import FAST_RETRIES, http_server


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """24 unlabelled rows as 3 shards of 8 under served/shards/search/, and a checkpoint."""
    tmp = tmp_path_factory.mktemp("url")
    table, _ = unlabelled_table(24)
    parquet = write_parquet(table, tmp / "parquet" / "cutouts.parquet")
    assert haloscope(["shards", "--unlabelled", "--data", str(parquet), "--out",
                      str(tmp / "served" / "shards"), "--shard-samples", "8",
                      "--record-samples", "4", "--no-progress"]) == 0  # fmt: skip
    manifest = json.loads((tmp / "served" / "shards" / "search" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3
    return {"tmp": tmp, "ckpt": make_checkpoint(tmp / "run" / "best.pt"), "manifest": manifest}


def _parts(out) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "parts").iterdir()}


def _shard_gets(faults) -> Counter:
    return Counter(p for method, p, _ in faults.requests if method == "GET" and p.endswith(".tar"))


def test_url_equals_local_each_shard_fetched_once_and_rerun_resumes(split):
    tmp, shards = split["tmp"], split["manifest"]["shards"]
    common = ["--ckpt", str(split["ckpt"]), "--batch-size", "4", "--num-workers", "2"]
    # the reference in this process (a subprocess less), with the subprocesses' one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert haloscope(["search", "--input", str(tmp / "served" / "shards"), "--out",
                          str(tmp / "local"), *common, "--num-workers", "0", "--device", "cpu",
                          "--no-progress"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = tmp / "remote"
    with http_server(tmp / "served") as (url, faults):
        # the root URL: its search/ holds the split (no manifest.json at the root itself)
        first = search("--input", f"{url}/shards", "--out", str(out), *common)
        assert first.returncode == 0, first.stderr
        # two loader workers and the gallery read the shards: each was downloaded once
        assert _shard_gets(faults) == {f"/shards/search/{s['file']}": 1 for s in shards}
        cached = sorted(p.name for p in (out / "shard-cache").glob("*/*.tar"))
        assert cached == sorted(f"{s['sha256']}.tar" for s in shards)
        want = pq.read_table(tmp / "local" / "candidates.parquet")
        assert_tables_identical(pq.read_table(out / "candidates.parquet"), want)
        assert json.loads((out / "summary.json").read_text())["rejected"] == 0

        # the split folder's URL is the same split: the re-run resumes, scores nothing again
        before, faults.requests[:] = _parts(out), []
        again = search("--input", f"{url}/shards/search", "--out", str(out), *common)
        assert again.returncode == 0, again.stderr
        assert "3 chunks (24 rows), 3 already finished" in again.stderr
        assert _parts(out) == before
        assert not _shard_gets(faults)  # the gallery read the cached shards
        assert_tables_identical(pq.read_table(out / "candidates.parquet"), want)


def _search(*args: str) -> int:
    return search_here(*args, "--batch-size", "8")


def test_url_errors_are_one_line(split, capsys, tmp_path):
    tmp, ckpt = split["tmp"], str(split["ckpt"])
    bad = tmp_path / "served"
    shutil.copytree(tmp / "served", bad)
    shard = bad / "shards" / "search" / split["manifest"]["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    with http_server(bad) as (url, _):
        assert _search("--input", f"{url}/nothing", "--ckpt", ckpt,
                       "--out", str(tmp_path / "o1")) != 0  # fmt: skip
        line = error_line(capsys)
        assert f"{url}/nothing/manifest.json" in line
        assert f"{url}/nothing/search/manifest.json" in line

        assert _search("--input", f"{url}/shards", "--ckpt", ckpt,
                       "--out", str(tmp_path / "o2")) != 0  # fmt: skip
        line = error_line(capsys)
        assert "sha256 differs from the manifest (corrupt shard)" in line
        assert shard.name in line

        assert _search("--input", f"{url}/shards", "--input-kind", "parquet", "--ckpt", ckpt,
                       "--out", str(tmp_path / "o3")) == 2  # fmt: skip
        assert "only shard splits" in error_line(capsys)
    nobody = f"http://127.0.0.1:{free_port()}/shards"
    assert _search("--input", nobody, "--ckpt", ckpt, "--out", str(tmp_path / "o4")) != 0
    line = error_line(capsys)
    assert f"{nobody}/manifest.json" in line and "gave up after 3 attempts" in line


def test_cache_dir_with_a_local_input_is_unused(split, tmp_path, caplog):
    tmp = split["tmp"]
    cache = tmp_path / "cache"
    assert _search("--input", str(tmp / "served" / "shards"), "--ckpt", str(split["ckpt"]),
                   "--out", str(tmp_path / "out"), "--cache-dir", str(cache)) == 0  # fmt: skip
    assert not cache.exists() and not (tmp_path / "out" / "shard-cache").exists()
    assert pq.read_table(tmp_path / "out" / "candidates.parquet").num_rows == 24
