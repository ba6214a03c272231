"""Loader benchmark (``haloscope bench loader``): samples/s per core, shard bytes -> batch.

Three ways to turn stored cutouts into a (B, 3, 64, 64) batch tensor, each timed in one
process on one core (``torch.set_num_threads(1)``), from files in the page cache:

(a) the seed's way: a parquet file of ``stamp_npz`` rows read with pyarrow, each row turned
    into Python objects (``.as_py()``), ``np.load`` of the npz, numpy ``outer``
    normalisation per row, stacked into a batch;
(b) plain WebDataset: one sample per tar member group (``image.npy`` float16 + ``cls``),
    ``wds.WebDataset(...).decode().to_tuple(...).batched(B)``, collated to tensors;
(c) haloscope: ``ShardReader`` (shuffled training order) over packed-record shards.
(d) streamed: the same ``ShardReader`` over the same shards served by an HTTP server on
    127.0.0.1 (``http.server`` with ``Range``, in its own process, so its CPU is not counted):
    records by range requests (no cache), and from a warm ``--cache-dir`` (whole verified
    shards, memory-mapped), each as a ratio to (c) measured in the same run.

When CUDA is available every batch is also pinned (``pin_memory()``) inside the timed loop;
otherwise the JSON says so. ``(c)`` with DataLoader workers is reported as well (total, not
per core). Results go to ``bench/results/loader.json``; a ``pinned_on_gpu_host`` block that
``bench/loader_pin.py`` recorded there on a GPU host is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haloscope.atomic import atomic_write_text
from haloscope.shards.schema import TABLE_DTYPE
from haloscope.shards.write import write_shard

__all__ = ["run_bench", "main"]

log = logging.getLogger(__name__)
BATCH = 256


def _write_parquet(path: Path, n: int, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = []
    for _ in range(n):
        stamp = rng.normal(0, 0.01, (3, 64, 64)).astype(np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, image_g=stamp[0], image_r=stamp[1], image_z=stamp[2])
        blobs.append(buf.getvalue())
    table = pa.table(
        {
            "task_id": [f"t{i}" for i in range(n)],
            "is_control": [i % 2 for i in range(n)],
            "psfsize_r": rng.uniform(1, 1.5, n),
            "stamp_npz": blobs,
        }
    )
    pq.write_table(table, path, compression="zstd")


def _seed_way(path: Path, pin: bool) -> Iterable[torch.Tensor]:
    import pyarrow.parquet as pq

    from haloscope.preprocess.normalize import outer_normalize

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=BATCH):
        col_npz, col_lab = batch.column("stamp_npz"), batch.column("is_control")
        images, labels = [], []
        for i in range(batch.num_rows):
            with np.load(io.BytesIO(col_npz[i].as_py())) as npz:
                stamp = np.stack([npz["image_g"], npz["image_r"], npz["image_z"]])
            images.append(outer_normalize(stamp[None])[0])
            labels.append(1 - col_lab[i].as_py())
        x = torch.from_numpy(np.stack(images).astype(np.float16))
        yield x.pin_memory() if pin else x


def _write_wds(path: Path, image: np.ndarray, labels: np.ndarray) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for i in range(len(image)):
            sink.write({"__key__": f"s{i:07d}", "image.npy": image[i], "cls": int(labels[i])})


def _plain_wds(path: Path, pin: bool) -> Iterable[torch.Tensor]:
    import webdataset as wds

    ds = (
        wds.WebDataset(str(path), shardshuffle=False)
        .decode()
        .to_tuple("image.npy", "cls")
        .batched(BATCH, partial=True)
    )
    for images, labels in ds:
        x = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
        _ = torch.as_tensor(labels, dtype=torch.float32)
        yield x.pin_memory() if pin else x


def _haloscope(split_dir: Path | str, pin: bool, epochs: int, **kw: Any) -> Iterable[torch.Tensor]:
    from haloscope.shards.read import ShardReader

    reader = ShardReader(split_dir, batch_size=BATCH, seed=0, **kw)
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        for batch in reader:
            yield batch["image"].pin_memory() if pin else batch["image"]


def _rate(make: Callable[[], Iterable[torch.Tensor]], repeats: int = 3) -> dict[str, float]:
    best = 0.0
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        for x in make():
            n += x.shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return {"samples_per_s": round(best, 1)}


def _write_packed(split_dir: Path, image: np.ndarray, labels: np.ndarray, per_shard: int) -> None:
    from haloscope.shards.manifest import build_manifest, write_manifest

    split_dir.mkdir(parents=True)
    shards = []
    for k, start in enumerate(range(0, len(image), per_shard)):
        sl = slice(start, start + per_shard)
        table = np.zeros(len(image[sl]), TABLE_DTYPE)
        table["label"] = labels[sl]
        meta = np.zeros((len(table), 2), np.float32)
        shards.append(
            write_shard(split_dir / f"shard-{k:06d}.tar", image[sl], meta, table).to_json()
        )
    doc = build_manifest(
        split="bench",
        shards=shards,
        counts={},
        rejected={},
        norm={"method": "outer"},
        meta={"columns": ["a", "b"], "mean": [0, 0], "std": [1, 1]},
        preprocess={},
    )
    write_manifest(split_dir, doc)


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single ``Range: bytes=a-b`` requests (``http.server`` has none)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().do_GET()
        size = path.stat().st_size
        start = int(match.group(1))
        stop = min(size, int(match.group(2)) + 1) if match.group(2) else size
        with open(path, "rb") as fh:
            fh.seek(start)
            body = fh.read(stop - start)
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        self.wfile.write(body)


def _serve(root: str, ports: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=root))
    ports.put(server.server_address[1])
    server.serve_forever()


@contextmanager
def _http_server(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 from another process; yields the base URL."""
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(str(root), ports), daemon=True)
    proc.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=60)}"
    finally:
        proc.terminate()
        proc.join()


def _streamed(split_dir: Path, cache_dir: Path, pin: bool) -> dict[str, Any]:
    """(d): the reader over HTTP by range requests, then from a warmed cache; ratios to (c)
    measured again just before (a loaded machine drifts between the rows)."""
    local = _rate(lambda: _haloscope(split_dir, pin, epochs=2))["samples_per_s"]
    with _http_server(split_dir.parent) as url:
        source = f"{url}/{split_dir.name}"
        ranged = _rate(lambda: _haloscope(source, pin, epochs=2))
        t0 = time.perf_counter()
        n = sum(len(x) for x in _haloscope(source, pin, epochs=1, cache_dir=cache_dir))
        fill = n / (time.perf_counter() - t0)
        cached = _rate(lambda: _haloscope(source, pin, epochs=2, cache_dir=cache_dir))
    return {
        "c_local_mmap_samples_per_s": local,
        "http_range_samples_per_s": ranged["samples_per_s"],
        "cache_samples_per_s": cached["samples_per_s"],
        "cache_fill_epoch_samples_per_s": round(fill, 1),
        "http_range_over_c": round(ranged["samples_per_s"] / local, 3),  # (c) of this row
        "cache_over_c": round(cached["samples_per_s"] / local, 3),
        "note": "one reader process, torch threads = 1; the HTTP server (127.0.0.1, Range "
        "requests, ThreadingHTTPServer) runs in another process whose CPU is not counted; "
        "http_range: one request per packed record (no cache); cache: --cache-dir already "
        "filled (shards memory-mapped from it); cache_fill: the first epoch, downloading "
        "and sha256-checking every shard",
    }


def run_bench(
    out_path: str,
    *,
    seed_rows: int = 2048,
    wds_samples: int = 16384,
    packed_samples: int = 32768,
    workers: int = 2,
) -> dict[str, Any]:
    """Run the three loaders once and write the JSON result to ``out_path``.

    Args:
        out_path: JSON destination (e.g. ``bench/results/loader.json``).
        seed_rows: parquet rows for (a).
        wds_samples: samples for (b).
        packed_samples: samples for (c) (read for several epochs).
        workers: DataLoader workers for the extra multi-worker figure of (c).

    Returns:
        The result dict (also written to ``out_path``).
    """
    torch.set_num_threads(1)
    load_before = round(os.getloadavg()[0], 2)  # other jobs on the machine skew per-core rates
    pin = torch.cuda.is_available()
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(size=(packed_samples, 3, 64, 64)), -10, 10).astype(np.float16)
    labels = rng.integers(0, 2, packed_samples).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="haloscope-bench-") as tmp:
        tmp = Path(tmp)
        _write_parquet(tmp / "seed.parquet", seed_rows, rng)
        _write_wds(tmp / "plain.tar", image[:wds_samples], labels[:wds_samples])
        _write_packed(tmp / "packed", image, labels, per_shard=4096)
        res = {
            "a_seed_parquet_rows": _rate(lambda: _seed_way(tmp / "seed.parquet", pin), 2),
            "b_plain_webdataset": _rate(lambda: _plain_wds(tmp / "plain.tar", pin)),
            "c_haloscope": _rate(lambda: _haloscope(tmp / "packed", pin, epochs=2)),
        }
        res["c_haloscope_workers"] = _multi_worker(tmp / "packed", workers)
        res["d_streamed"] = _streamed(tmp / "packed", tmp / "cache", pin)
    a, b, c = (
        res[k]["samples_per_s"]
        for k in ("a_seed_parquet_rows", "b_plain_webdataset", "c_haloscope")
    )
    result = {
        "benchmark": "loader",
        "unit": "samples/s per core (one process, torch threads = 1)",
        "batch_size": BATCH,
        "pinned": pin,
        "pinned_note": None if pin else "no CUDA on this machine: batches are not pinned",
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "results": res,
        "ratios": {
            "c_over_a": round(c / a, 1),
            "c_over_b": round(c / b, 1),
            "http_range_over_c": res["d_streamed"]["http_range_over_c"],
            "cache_over_c": res["d_streamed"]["cache_over_c"],
        },  # fmt: skip
        "targets": {"c_min_samples_per_s": 100_000, "c_over_a_min": 20, "c_over_b_min": 5},
        "targets_met": {"c": c >= 100_000, "c_over_a": c / a >= 20, "c_over_b": c / b >= 5},
    }
    out = Path(out_path)
    with contextlib.suppress(
        OSError, ValueError, KeyError, TypeError
    ):  # keep what loader_pin measured on a GPU
        result["pinned_on_gpu_host"] = json.loads(out.read_text())["pinned_on_gpu_host"]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result


def _multi_worker(split_dir: Path, workers: int) -> dict[str, Any]:
    from haloscope.shards.read import ShardReader, build_loader

    reader = ShardReader(split_dir, batch_size=BATCH, seed=0)
    best = 0.0
    for epoch in range(3):
        reader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in build_loader(reader, num_workers=workers, prefetch_factor=4):
            n += batch["image"].shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return {
        "samples_per_s_total": round(best, 1),
        "num_workers": workers,
        "note": "whole DataLoader incl. worker start-up and IPC; not per core",
    }


def main(argv: list[str]) -> int:
    """``haloscope bench loader [--out PATH]``."""
    from haloscope.argparse_util import VerbParser

    parser = VerbParser(
        "bench loader",
        "Loader throughput: seed parquet vs plain WebDataset vs haloscope shards, memory-mapped "
        "and streamed from an HTTP server on 127.0.0.1 (range requests, and a warm --cache-dir), "
        "samples/s per core.",
    )
    parser.add_argument("--out", default="bench/results/loader.json", help="JSON output path")
    parser.add_argument(
        "--workers", type=int, default=2, help="workers for the multi-worker figure"
    )
    args = parser.parse_args(argv)
    result = run_bench(args.out, workers=args.workers)
    print(json.dumps({"results": result["results"], "ratios": result["ratios"]}, indent=1))
    return 0
