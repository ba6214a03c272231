"""Pinned-batch loader throughput on a CUDA machine: where to pin, how many workers.

``python -m haloscope.bench.loader_pin OUT.json`` writes packed shards to a temporary
directory and measures samples/s from shard bytes to pinned (B, 3, 64, 64) batches:

- in-process (no workers, one core): ``ShardReader`` + ``Tensor.pin_memory()``;
- ``build_loader`` with 1..N workers, pinning in the DataLoader's pin thread
  (``pin_thread=True``) or in the consuming thread (``pin_thread=False``);
- optionally followed by a ``non_blocking`` host-to-device copy of each batch.

Needs only numpy and torch (no pyarrow/webdataset), so it runs on a bare GPU image.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haloscope.bench.loader import _write_packed
from haloscope.shards.read import ShardReader, build_loader

__all__ = ["run_pin_bench"]


def _rate(reader: ShardReader, make_iter, epochs: int = 2, to_device: bool = False) -> float:
    best = 0.0
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in make_iter():
            x = batch["image"]
            if to_device:
                x = x.to("cuda", non_blocking=True)
            n += x.shape[0]
        if to_device:
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t0))
    return round(best, 1)


def run_pin_bench(
    out_path: str, samples: int = 65536, batch: int = 256, workers: tuple[int, ...] = (1, 2, 4)
) -> dict[str, Any]:
    """Measure and write the JSON result (see the module docstring)."""
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(size=(samples, 3, 64, 64)), -10, 10).astype(np.float16)
    labels = rng.integers(0, 2, samples).astype(np.uint8)
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _write_packed(Path(tmp) / "p", image, labels, per_shard=4096)
        reader = ShardReader(Path(tmp) / "p", batch_size=batch, seed=0)

        res["in_process_one_core_unpinned"] = _rate(reader, lambda: iter(reader))
        res["in_process_one_core"] = _rate(
            reader, lambda: build_loader(reader, num_workers=0, pin_memory=True)
        )
        for w in workers:
            for pin_thread in (True, False):
                name = f"workers{w}_{'pin_thread' if pin_thread else 'pin_consumer'}"
                res[name] = _rate(
                    reader,
                    lambda w=w, pin_thread=pin_thread: build_loader(
                        reader, num_workers=w, pin_memory=True, pin_thread=pin_thread
                    ),
                )
            if cuda:
                res[f"workers{w}_pin_thread_h2d"] = _rate(
                    reader,
                    lambda w=w: build_loader(reader, num_workers=w, pin_memory=True),
                    to_device=True,
                )
    result = {
        "benchmark": "loader_pinned",
        "unit": "samples/s",
        "batch_size": batch,
        "pinned": cuda,
        "samples": samples,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "machine": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "results": res,
    }
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run_pin_bench(sys.argv[1]), indent=1))
