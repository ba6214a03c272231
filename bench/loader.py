"""Loader benchmark (``haloscope bench loader``): samples/s per core, shard bytes -> batch.

Three ways to turn stored cutouts into a (B, 3, 64, 64) batch tensor, each timed in one
process on one core (``torch.set_num_threads(1)``), from files in the page cache:

(a) the seed's way: a parquet file of ``stamp_npz`` rows read with pyarrow, each row turned
    into Python objects (``.as_py()``), ``np.load`` of the npz, numpy ``outer``
    normalisation per row, stacked into a batch;
(b) plain WebDataset: one sample per tar member group (``image.npy`` float16 + ``cls``),
    ``wds.WebDataset(...).decode().to_tuple(...).batched(B)``, collated to tensors;
(c) haloscope: ``ShardReader`` (shuffled training order) over packed-record shards.

When CUDA is available every batch is also pinned (``pin_memory()``) inside the timed loop;
otherwise the JSON says so. ``(c)`` with DataLoader workers is reported as well (total, not
per core). Results go to ``bench/results/loader.json``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def _haloscope(split_dir: Path, pin: bool, epochs: int) -> Iterable[torch.Tensor]:
    from haloscope.shards.read import ShardReader

    reader = ShardReader(split_dir, batch_size=BATCH, seed=0)
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
        "ratios": {"c_over_a": round(c / a, 1), "c_over_b": round(c / b, 1)},
        "targets": {"c_min_samples_per_s": 100_000, "c_over_a_min": 20, "c_over_b_min": 5},
        "targets_met": {"c": c >= 100_000, "c_over_a": c / a >= 20, "c_over_b": c / b >= 5},
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
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
        "Loader throughput: seed parquet vs plain WebDataset "
        "vs haloscope shards, samples/s per core.",
    )
    parser.add_argument("--out", default="bench/results/loader.json", help="JSON output path")
    parser.add_argument(
        "--workers", type=int, default=2, help="workers for the multi-worker figure"
    )
    args = parser.parse_args(argv)
    result = run_bench(args.out, workers=args.workers)
    print(json.dumps({"results": result["results"], "ratios": result["ratios"]}, indent=1))
    return 0
