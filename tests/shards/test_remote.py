"""Shards read from URLs (``shards/remote.py``) against real servers on 127.0.0.1: the same
batches as the local reader for every rank, worker count and resume position; the cache;
retries and one-line errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from haloscope.errors import ConfigError, DataError
from haloscope.shards import read as read_mod
from haloscope.shards.manifest import load_manifest
from haloscope.shards.read import ShardReader, build_loader
from haloscope.shards.remote import (
    RemotePath,
    RetryPolicy,
    ShardCache,
    cache_bytes_from_env,
    open_source,
)
from tests.shards.remote_servers import (
    FAST_RETRIES,
    Faults,
    http_server,
    s3_server,
    upload_tree,
)
from tests.train.train_fixtures import make_shards


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train (96 samples, 16 per record, 2 shards) and val (64)."""
    return make_shards(tmp_path_factory.mktemp("remote"))


def _ids(batches) -> list[list[bytes]]:
    return [list(b["table"]["task_id"][np.asarray(b["valid"])]) for b in batches]


def _epochs(reader: ShardReader, workers: int, epochs=(0, 1)) -> list[list[bytes]]:
    out = []
    for epoch in epochs:
        reader.set_epoch(epoch)
        out += _ids(build_loader(reader, num_workers=workers, pin_memory=False))
    return out


def _pair(local: Path, url: str, **kw) -> tuple[ShardReader, ShardReader]:
    kw = {"batch_size": 8, "seed": 5, "with_table": True} | kw
    return ShardReader(local, **kw), ShardReader(url, **kw)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cached", [False, True])
def test_http_batches_equal_local_for_every_rank(
    root: Path, tmp_path: Path, workers: int, cached: bool
) -> None:
    cache = tmp_path / "cache" if cached else None
    with http_server(root) as (url, faults):
        for rank in (0, 1):
            local, remote = _pair(
                root / "train", f"{url}/train", rank=rank, world_size=2, cache_dir=cache
            )
            assert remote.is_ranged is not cached
            assert _epochs(remote, workers) == _epochs(local, workers)
        # exact eval order: every val sample once over the ranks, padded batches equal
        seen = []
        for rank in (0, 1):
            local, remote = _pair(
                root / "val",
                f"{url}/val",
                rank=rank,
                world_size=2,
                shuffle=False,
                drop_last=False,
                cache_dir=cache,
            )
            got = _epochs(remote, workers, epochs=(0,))
            assert got == _epochs(local, workers, epochs=(0,))
            seen += [i for batch in got for i in batch]
    assert sorted(seen) == sorted(f"val-{i}".encode() for i in range(64))
    gets = [r for r in faults.requests if r[0] == "GET" and r[1].endswith(".tar")]
    if cached:  # whole shards, once each (2 train + 2 val), whatever the workers and ranks
        assert len(gets) == 4 and all(r[2] is None for r in gets)
    else:  # one range request per record
        assert gets and all(r[2] and r[2].startswith("bytes=") for r in gets)


def test_http_mid_epoch_resume(root: Path) -> None:
    with http_server(root) as (url, _):
        full = ShardReader(f"{url}/train", batch_size=8, seed=5, with_table=True)
        full.set_epoch(1)
        want = _ids(full)
        first = ShardReader(f"{url}/train", batch_size=8, seed=5, with_table=True)
        first.set_epoch(1)
        loader = iter(build_loader(first, num_workers=2, pin_memory=False))
        head = _ids([next(loader) for _ in range(5)])
        state = first.state_dict()
        resumed = ShardReader(f"{url}/train", batch_size=8, seed=5, with_table=True)
        resumed.load_state_dict(state)
        tail = _ids(build_loader(resumed, num_workers=2, pin_memory=False))
    assert state["batches_consumed"] == 5
    assert head + tail == want


def test_s3_batches_equal_local(root: Path, tmp_path: Path) -> None:
    with s3_server():
        upload_tree(root, "lenses", "runs/shards")
        for cache in (None, tmp_path / "cache"):
            local, remote = _pair(root / "train", "s3://lenses/runs/shards/train", cache_dir=cache)
            assert _epochs(remote, 2) == _epochs(local, 2)
        assert load_manifest("s3://lenses/runs/shards/val").num_samples == 64
        with pytest.raises(
            DataError, match=r"s3://lenses/nothing/train/manifest.json: no manifest"
        ):
            ShardReader("s3://lenses/nothing/train", batch_size=8)


def test_cache_is_verified_bounded_and_shared(root: Path, tmp_path: Path) -> None:
    m = load_manifest(root / "train")
    sizes = [s["bytes"] for s in m.shards]
    cache_dir = tmp_path / "cache"
    with http_server(root) as (url, faults):
        # room for one shard: the other is evicted, least recently used first
        reader = ShardReader(
            f"{url}/train", batch_size=8, seed=5, cache_dir=cache_dir, cache_bytes=max(sizes) + 1
        )
        assert (
            sum(len(b["label"]) for b in build_loader(reader, num_workers=2, pin_memory=False))
            == 96
        )
        files = list(cache_dir.glob("??/*.tar"))
        assert len(files) == 1 and files[0].stem in {s["sha256"] for s in m.shards}
        assert not [p for p in cache_dir.rglob("*.tmp")]  # temporaries renamed or removed
        # a cached shard is read from disk: no request for it, not even its size
        before = len(faults.requests)
        ShardReader(f"{url}/train", batch_size=8, cache_dir=cache_dir)
        heads = [r for r in faults.requests[before:] if r[0] == "HEAD"]
        assert len(heads) == 1 and files[0].stem not in heads[0][1]
    cache = ShardCache(cache_dir, max_bytes=1)
    assert cache.evict(keep=files[0]) == 0  # the shard just fetched is never evicted
    size = files[0].stat().st_size
    assert cache.evict() == size and not list(cache_dir.glob("??/*.tar"))


def test_cache_rejects_a_shard_whose_sha256_differs(root: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(root, served)
    shard = served / "train" / load_manifest(root / "train").shards[0]["file"]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    with http_server(served) as (url, _):
        reader = ShardReader(
            f"{url}/train", batch_size=8, seed=5, cache_dir=tmp_path / "c", shuffle=False
        )
        with pytest.raises(DataError, match=r"shard-000000.tar: sha256 differs from the manifest"):
            list(reader)
    assert not list((tmp_path / "c").glob("??/*.tar"))


def test_transient_errors_are_retried(root: Path) -> None:
    faults = Faults(fail_first={"/train/manifest.json": 2, "/train/shard-000001.tar": 1})
    with http_server(root, faults) as (url, _):
        local, remote = _pair(root / "train", f"{url}/train", shuffle=False)
        assert _ids(remote) == _ids(local)
    manifest_gets = [r for r in faults.requests if r[1] == "/train/manifest.json"]
    assert len(manifest_gets) == 3  # two 503s, then the manifest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_truncated_and_unreachable_are_one_clear_error(root: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(root, served)
    files = [s["file"] for s in load_manifest(root / "train").shards]
    (served / "train" / files[0]).unlink()
    with http_server(served) as (url, faults):
        with pytest.raises(DataError, match=rf"{url}/train/{files[0]}: not found \(HTTP 404\)"):
            ShardReader(f"{url}/train", batch_size=8)
        assert len([r for r in faults.requests if r[1].endswith(files[0])]) == 1  # not retried
    # an object shorter than the manifest says: refused before reading
    shutil.copy(root / "train" / files[0], served / "train" / files[0])
    with open(served / "train" / files[1], "r+b") as fh:
        fh.truncate(4096)
    with http_server(served) as (url, _):
        with pytest.raises(DataError, match=rf"{files[1]}: 4096 bytes but the manifest says"):
            ShardReader(f"{url}/train", batch_size=8)
    # a transfer cut short every time: retried, then one line
    faults = Faults(cut={f"/train/{files[0]}"})
    with http_server(root, faults) as (url, _):
        reader = ShardReader(f"{url}/train", batch_size=8, shuffle=False)
        with pytest.raises(DataError, match=r"truncated transfer.*gave up after 3 attempts"):
            list(reader)
    assert len([r for r in faults.requests if r[:2] == ("GET", f"/train/{files[0]}")]) == 3
    # nobody listening
    url = f"http://127.0.0.1:{_closed_port()}/train"
    with pytest.raises(DataError, match=r"manifest.json: .*Connection ?Refused.*gave up after 3"):
        ShardReader(url, batch_size=8)


def test_a_shard_laid_out_otherwise_is_walked(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def shifted(records: list[int], num_meta: int) -> list[tuple[int, int]]:
        return [(a + 512, b + 512) for a, b in real(records, num_meta)]

    real = read_mod.record_spans
    monkeypatch.setattr(read_mod, "record_spans", shifted)  # a wrong prediction
    with http_server(root) as (url, _):
        local, remote = _pair(root / "train", f"{url}/train")
        assert _epochs(remote, 0) == _epochs(local, 0)


def test_sources_and_policy() -> None:
    assert (
        str(RemotePath("s3://b/p/") / "train" / "manifest.json") == "s3://b/p/train/manifest.json"
    )
    assert RetryPolicy.from_env({"HALOSCOPE_REMOTE_RETRIES": "2"}).attempts == 2
    with pytest.raises(Exception, match="HALOSCOPE_REMOTE_"):
        RetryPolicy.from_env({"HALOSCOPE_REMOTE_RETRIES": "x"})
    assert cache_bytes_from_env({"HALOSCOPE_CACHE_MAX_GB": "0.5"}) == 2**29
    assert cache_bytes_from_env({}) == 200 * 2**30
    with pytest.raises(ConfigError, match="HALOSCOPE_CACHE_MAX_GB must be a positive number"):
        cache_bytes_from_env({"HALOSCOPE_CACHE_MAX_GB": "0"})
    with pytest.raises(Exception, match=r"no reader for nosuchproto:// URLs"):
        open_source("nosuchproto://host/shards/train")


def test_cli_prints_one_line_when_the_server_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/shards"
    proc = subprocess.run([sys.executable, "-m", "haloscope", "train", "--shards", url,
                           "--out-dir", str(tmp_path / "run"), "--device", "cpu",
                           "--num-workers", "0"], capture_output=True, text=True,
                          env={**_env(), **FAST_RETRIES}, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "haloscope train: error:" in line]
    retries = [line for line in proc.stderr.splitlines() if "retrying in" in line]
    assert len(errors) == 1 and len(retries) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{url}/train/manifest.json" in errors[0] and "gave up after 3 attempts" in errors[0]


def _env() -> dict[str, str]:
    return dict(os.environ)
