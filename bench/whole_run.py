"""``haloscope bench gpu --whole-run``: a whole training run's img/s against its synthetic step.

Two measurements of the same training step (``train.step.TrainStep``: the model, optimiser,
precision, memory format and augmentation of ``haloscope train``, one CUDA graph per step
on CUDA, eager on CPU):

1. ``synthetic``: the step alone for ``seconds`` seconds on 4 batches already on the device,
   cycled, after a warm-up (the capture); no host sync until the end;
2. ``whole_run``: a real ``haloscope train`` run on ``--shards`` in a subprocess, with its
   loader, validations, checkpoints and metrics, timed by the trainer itself from the
   first step to the last checkpoint on disk (``RUN/time_breakdown.json``).

``whole_run_over_synthetic`` = whole-run img/s / synthetic img/s, the fraction of the
step's speed that a run keeps (issue 17: the target is >= 0.95), with the run's time
breakdown (step, loader wait, validation, checkpoint, other) beside it. Both sides leave
out their one-time setup, as the synthetic rate leaves out its warm-up and capture: the run
is timed from its first step, after starting its loaders and capturing its graphs
(``time/setup_s``). ``whole_run_with_setup_over_synthetic`` counts that setup too (the
run's samples over setup plus clock).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from haloscope.atomic import atomic_write_text
from haloscope.errors import ConfigError

__all__ = ["run_whole_run", "synthetic_rate"]

log = logging.getLogger(__name__)
TIMING_NAME = "time_breakdown.json"  # as train.run.TIMING_NAME (not imported: no torch init)


def _model_and_step(shards: Path, arch: str, batch_size: int, device: torch.device) -> Any:
    """The trainer's model and step for ``shards`` (meta columns and statistics of the
    train manifest, the default dropout/drop-path, AdamW, bf16 and channels-last on CUDA)."""
    from haloscope.shards.manifest import load_manifest
    from haloscope.train.config import ModelConfig, OptimConfig
    from haloscope.train.model import build_model
    from haloscope.train.optim import build_optimizer
    from haloscope.train.step import make_train_step

    manifest = load_manifest(shards / "train")
    m, o = ModelConfig(), OptimConfig()
    model = build_model(arch=arch, meta_cols=list(manifest.meta_columns),
                        meta_mean=[float(v) for v in manifest.meta_mean],
                        meta_std=[float(v) for v in manifest.meta_std], dropout=m.dropout,
                        drop_path_rate=m.drop_path_rate).to(device)  # fmt: skip
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    gen = torch.Generator(device=device).manual_seed(0)
    step = make_train_step(model, None, opt, batch_size, device=device, mode="auto",
                           aug_generator=gen, channels_last=cuda,
                           max_grad_norm=o.grad_clip)  # fmt: skip
    return step, len(manifest.meta_columns)


def synthetic_rate(shards: Path, *, arch: str, batch_size: int, device: torch.device,
                   seconds: float, warmup: int = 5) -> dict[str, Any]:  # fmt: skip
    """img/s of the run's step alone on cycled device batches (see the module doc)."""
    step, num_meta = _model_and_step(shards, arch, batch_size, device)
    g = torch.Generator(device=device).manual_seed(1)
    batches = [(torch.randn(batch_size, 3, 64, 64, device=device, generator=g).half(),
                torch.rand(batch_size, num_meta, device=device, generator=g),
                (torch.rand(batch_size, device=device, generator=g) < 0.3).float())
               for _ in range(4)]  # fmt: skip
    feed = itertools.cycle(batches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(warmup):  # the first call captures the graph
        step.step(*next(feed))
    sync()
    warmup_s = time.perf_counter() - t0
    num_steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step.step(*next(feed))
        num_steps += 1
    sync()
    dt = time.perf_counter() - t0
    return {"mode": step.mode, "batch_size": batch_size, "steps": num_steps,
            "seconds": round(dt, 3), "img_per_s": round(num_steps * batch_size / dt, 2),
            "warmup_s": round(warmup_s, 3)}  # fmt: skip


def _train_command(shards: Path, run_dir: Path, *, arch: str, batch_size: int, device: str,
                   train_args: str) -> list[str]:  # fmt: skip
    return [sys.executable, "-m", "haloscope", "train", "--shards", str(shards), "--out-dir",
            str(run_dir), "--arch", arch, "--batch-size", str(batch_size), "--device", device,
            "--no-progress", "--overwrite", *shlex.split(train_args)]  # fmt: skip


def whole_run(shards: Path, run_dir: Path, **kw: Any) -> dict[str, Any]:
    """Run ``haloscope train`` (see ``_train_command``) and return its time breakdown.

    Raises:
        RuntimeError: the run failed (with the end of its output).
    """
    cmd = _train_command(shards, run_dir, **kw)
    log.info("whole run: %s", shlex.join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"haloscope train exited {proc.returncode}: {proc.stderr[-3000:]}")
    timing = json.loads((run_dir / TIMING_NAME).read_text())
    return {**timing, "process_wall_s": round(time.perf_counter() - t0, 3),
            "command": cmd[1:]}  # fmt: skip


def _env(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        from haloscope.bench.gpu import gpu_env

        return gpu_env()
    return {"device": "cpu", "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}  # fmt: skip


def run_whole_run(out_path: str, *, shards: str | None, device: str = "cuda",
                  arch: str = "convnext_tiny", batch_size: int = 256, seconds: float = 60.0,
                  train_args: str = "", work_dir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure the synthetic step, then a whole run, and write ``out_path`` (JSON).

    Args:
        out_path: result JSON (``bench/results/whole_run.json``).
        shards: shard root (train/ and val/) of the whole run.
        device: ``cuda`` (or ``cuda:N``) or ``cpu`` (a tiny check of the mechanics).
        arch: the model of both measurements.
        batch_size: the global batch of both (one process).
        seconds: how long the synthetic step runs.
        train_args: more ``haloscope train`` flags, e.g. ``"--epochs 3 --num-workers 8"``.
        work_dir: keep the run (checkpoints, metrics) in ``WORK_DIR/whole_run``; None: run
            in a temporary directory, removed afterwards.

    Raises:
        ConfigError: no shards, CUDA asked for but absent, or the default gpu.json as output.
        RuntimeError: the training run failed.
    """
    from haloscope.shards.remote import split_location

    root = split_location(shards or "")
    local = isinstance(root, Path)
    if not shards or local and not (root / "train" / "manifest.json").is_file():
        raise ConfigError(f"--whole-run needs --shards with train/ and val/ (a folder or a URL), "
                          f"got {shards!r}")  # fmt: skip
    if Path(out_path).name == "gpu.json":
        raise ConfigError(
            "--whole-run writes its own result: pass --out bench/results/whole_run.json"
        )
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--whole-run --device cuda needs a CUDA device; none is visible here")
    synthetic = synthetic_rate(root, arch=arch, batch_size=batch_size, device=dev, seconds=seconds)
    log.info("synthetic step: %s", synthetic)
    gc.collect()  # the step and its graph are gone: the run (another process) gets the memory
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    kw = {"arch": arch, "batch_size": batch_size, "device": device, "train_args": train_args}
    if work_dir is not None:
        run = {**whole_run(root, Path(work_dir) / "whole_run", **kw),
               "run_dir": str(Path(work_dir) / "whole_run")}  # fmt: skip
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run = whole_run(root, Path(tmp) / "run", **kw)
    rate = synthetic["img_per_s"]
    ratio = run["perf/img_per_s"] / rate if rate else 0.0
    with_setup = run["time/total_s"] + run["time/setup_s"]
    ratio_setup = run["run/num_samples"] / with_setup / rate if rate else 0.0
    doc = {"env": _env(dev), "settings": {"shards": str(root), "arch": arch,
           "batch_size": batch_size, "device": device, "synthetic_seconds": seconds,
           "train_args": train_args}, "synthetic": synthetic, "whole_run": run,
           "whole_run_over_synthetic": round(ratio, 4),
           "whole_run_with_setup_over_synthetic": round(ratio_setup, 4)}  # fmt: skip
    atomic_write_text(out_path, json.dumps(doc, indent=1) + "\n")
    return doc
