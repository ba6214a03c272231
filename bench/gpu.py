"""``haloscope bench gpu``: ConvNeXt-Tiny img/s on one GPU, eager vs compiled vs CUDA graph.

One run measures, for the trainer's model (``build_model``: timm ConvNeXt-Tiny, random init,
64x64, meta head with 2 columns), bf16 autocast, channels_last, fused capturable AdamW:

- training img/s at each batch size for the ``eager``, ``compile`` (torch.compile, default
  mode) and ``graph`` modes of the one step of ``train/step.py``, fed (a) by synthetic batches already
  on the device and (b) by the real ``ShardReader`` + ``build_loader`` over shards on local
  disk (written with the shards writer, random data), with the loader-wait fraction;
- inference img/s at batch 1024, the same three modes, (a) and (b);
- the loader alone (samples/s into pinned batches), peak GPU memory per row, the time of
  the first call (compile or capture), and a depthwise-7x7 probe (layouts, dtypes, cudnn
  benchmark) that tells whether another depthwise path would pay.

Timing: warm-up steps, then ``steps`` steps between two ``cuda.synchronize`` calls, no host
sync per step (one extra row shows the cost of reading the loss after every step).

``--whole-run`` measures something else: a whole ``haloscope train`` run on ``--shards``
against its synthetic graphed step (``bench/whole_run.py``), written to
``bench/results/whole_run.json``; ``--device cpu`` runs it in a tiny form on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haloscope.atomic import atomic_write_text
from haloscope.bench.depthwise import depthwise_probe, use_triton_depthwise
from haloscope.errors import ConfigError
from haloscope.train.step import make_eval_step, make_train_step

__all__ = ["run_bench", "parse_options", "main", "write_random_shards", "free_cuda", "gpu_env"]

log = logging.getLogger(__name__)
META_COLS = ("psfsize_r", "psfdepth_r")
MODES = ("eager", "compile", "graph", "graph_tdw")
"""graph_tdw: the graphed step on a copy of the model with the Triton depthwise 7x7."""


def write_random_shards(split_dir: Path, num_samples: int, *, seed: int = 0,
                        shard_samples: int = 8192) -> Path:  # fmt: skip
    """Write ``num_samples`` random samples as packed-record shards + manifest (the real writer)."""
    from haloscope.shards.manifest import build_manifest, write_manifest
    from haloscope.shards.schema import RECORD_SAMPLES, TABLE_DTYPE
    from haloscope.shards.write import write_shard

    rng = np.random.default_rng(seed)
    split_dir.mkdir(parents=True, exist_ok=True)
    # stamps drawn from a pool of random ones: content does not change the speed
    pool = rng.standard_normal((2048, 3, 64, 64), dtype=np.float32).astype(np.float16)
    infos, num_lens = [], 0
    for s, lo in enumerate(range(0, num_samples, shard_samples)):
        n = min(shard_samples, num_samples - lo)
        image = pool[rng.integers(0, len(pool), n)]
        meta = np.stack([rng.normal(1.3, 0.2, n), rng.normal(24.5, 0.5, n)], 1).astype(np.float32)
        table = np.zeros(n, dtype=TABLE_DTYPE)
        table["label"] = rng.random(n) < 0.3
        table["task_id"] = [f"b{lo + i}".encode() for i in range(n)]
        num_lens += int(table["label"].sum())
        info = write_shard(split_dir / f"shard-{s:06d}.tar", image, meta, table, RECORD_SAMPLES)
        infos.append(info.to_json())
    write_manifest(split_dir, build_manifest(
        split="train", shards=infos,
        counts={"lens": num_lens, "control": num_samples - num_lens}, rejected={},
        norm={"method": "outer", "clip": 10.0},
        meta={"columns": list(META_COLS), "mean": [1.3, 24.5], "std": [0.2, 0.5]},
        preprocess={"min_theta_over_psf": 0.5, "hard_neg_lookup": None, "hard_neg_weight": 1,
                    "stamp_px": 64},
        record_samples=RECORD_SAMPLES, command=["haloscope", "bench", "gpu"],
    ))  # fmt: skip
    return split_dir


def _model() -> torch.nn.Module:
    from haloscope.train.model import build_model

    model = build_model(arch="convnext_tiny", meta_cols=META_COLS, meta_mean=[1.3, 24.5],
                        meta_std=[0.2, 0.5], dropout=0.1, drop_path_rate=0.1)  # fmt: skip
    return model.cuda().to(memory_format=torch.channels_last)


class _PlainTimm(torch.nn.Module):
    """timm convnext_tiny with ``num_classes=1`` and no meta head: the issue's "eager timm step"."""

    def __init__(self) -> None:
        import timm

        super().__init__()
        self.net = timm.create_model("convnext_tiny", pretrained=False, num_classes=1,
                                     drop_path_rate=0.1)  # fmt: skip

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    from haloscope.train.optim import param_groups

    return torch.optim.AdamW(param_groups(model, 1e-2), lr=3e-4, fused=True, capturable=True)


def _synthetic(batch_size: int, count: int = 4) -> Iterable[dict[str, torch.Tensor]]:
    """Batches already on the device, cycled (the (a) feed)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = [{"image": torch.randn(batch_size, 3, 64, 64, device="cuda", generator=g).half(),
                "meta": torch.rand(batch_size, 2, device="cuda", generator=g) + 1.0,
                "label": (torch.rand(batch_size, device="cuda", generator=g) < 0.3).float()}
               for _ in range(count)]  # fmt: skip
    return itertools.cycle(batches)


def _reader(split_dir: Path, batch_size: int, workers: int, *, train: bool) -> Iterable[dict]:
    """The real reader (the (b) feed): shuffled full batches for training, ordered for scoring."""
    from haloscope.shards.read import ShardReader, build_loader

    reader = ShardReader(split_dir, batch_size=batch_size, seed=0, shuffle=train, drop_last=train)
    return build_loader(reader, num_workers=workers, pin_memory=True)


def _measure(run: Callable[[dict], Any], feed: Iterable[dict], batch_size: int, *,
             warmup: int, steps: int) -> dict[str, float]:  # fmt: skip
    """img/s over ``steps`` steps after ``warmup`` ones, with the time spent waiting on the feed."""
    it = iter(feed)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(next(it))
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        run(next(it))
    torch.cuda.synchronize()
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        run(batch)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"img_per_s": round(steps * batch_size / dt, 1), "step_ms": round(1e3 * dt / steps, 3),
            "loader_wait_frac": round(wait / dt, 4), "first_call_s": round(first_s, 2),
            "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "steps": steps}  # fmt: skip


def free_cuda() -> None:
    """Collect garbage, wait for the GPU and return cached blocks (between benchmark rows)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def bench_train(model: torch.nn.Module, mode: str, batch_size: int, feed: Iterable[dict], *,
                warmup: int, steps: int, augment: bool = True,
                sync_each_step: bool = False) -> dict[str, float]:  # fmt: skip
    """One training row: a fresh optimiser and step of ``mode`` over ``feed``.

    ``sync_each_step`` reads the loss on the host after every step, as a loop that logs
    every step does (it stops the host from queueing ahead of the GPU).
    """
    held = {
        "step": make_train_step(
            model, None, _optimizer(model), batch_size, device="cuda", mode=mode, augment=augment
        )
    }  # type: ignore[arg-type]

    def run(b: dict) -> Any:
        out = held["step"].step(b["image"], b["meta"], b["label"])
        return float(out["loss"]) if sync_each_step else out

    try:
        return _measure(run, feed, batch_size, warmup=warmup, steps=steps)
    finally:
        held.clear()  # frees the graph, its memory pool and the optimiser state
        free_cuda()


def bench_infer(model: torch.nn.Module, mode: str, batch_size: int, feed: Iterable[dict], *,
                warmup: int, steps: int) -> dict[str, float]:  # fmt: skip
    """One inference row: fp32 logits of ``mode`` over ``feed``."""
    held = {"step": make_eval_step(model, device="cuda", batch_size=batch_size, mode=mode)}  # type: ignore[arg-type]
    try:
        return _measure(lambda b: held["step"].logits(b["image"], b["meta"]), feed, batch_size,
                        warmup=warmup, steps=steps)  # fmt: skip
    finally:
        held.clear()
        free_cuda()


def loader_rate(split_dir: Path, batch_size: int, workers: int, batches: int) -> dict[str, float]:
    """Samples/s of the loader alone into pinned batches (first batch, i.e. fork, excluded)."""
    it = iter(_reader(split_dir, batch_size, workers, train=True))
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    return {"batch_size": batch_size, "num_workers": workers,
            "samples_per_s": round(batches * batch_size / dt, 1)}  # fmt: skip


def gpu_env() -> dict[str, Any]:
    """Device, memory and software versions for a benchmark's JSON."""
    import timm

    props = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "gpu_mem_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__, "timm": timm.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}  # fmt: skip


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """(b)/(a) per mode and batch, and each mode over the eager baselines on synthetic batches."""
    by = {(r["mode"], r["batch_size"], r["feed"]): r["img_per_s"] for r in rows
          if "host_sync" not in r and "img_per_s" in r}  # fmt: skip
    out = {}
    for (mode, b, feed), v in by.items():
        if feed == "reader" and (mode, b, "synthetic") in by:
            out[f"{mode}_b{b}_reader_over_synthetic"] = round(v / by[(mode, b, "synthetic")], 3)
        for base in ("eager", "eager_timm_plain"):
            if feed == "synthetic" and not mode.startswith("eager") and (base, b, feed) in by:
                out[f"{mode}_b{b}_over_{base}"] = round(v / by[(base, b, feed)], 3)
    return out


def _warm_clocks(seconds: float = 3.0) -> None:
    """Run matrix products for a few seconds so the first row does not meet idle clocks."""
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = (x @ x).clamp_(-1, 1)
        torch.cuda.synchronize()
    del x
    free_cuda()


def _guarded(fn: Callable[[], dict[str, Any]], mode: str) -> dict[str, Any]:
    """Run one row; an optional path (graph_tdw) that fails is recorded, not fatal."""
    if mode != "graph_tdw":
        return fn()
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the result and logged
        log.exception("graph_tdw row failed")
        free_cuda()
        return {"error": repr(exc)[:500]}


def _train_rows(doc: dict[str, Any], models: dict[str, torch.nn.Module], split: Path, b: int,
                modes: tuple[str, ...], workers: int, steps: int) -> None:  # fmt: skip
    """All training rows of one batch size (plus the plain-timm baseline and a synced row)."""

    def add(mode: str, feed: str, row: dict[str, Any], **extra: Any) -> None:
        doc["train"].append({"mode": mode, "batch_size": b, "feed": feed, **extra, **row})
        log.info("train %s", doc["train"][-1])

    model = models["base"]

    if "eager" in modes:  # the baseline: plain timm, no meta head, no augmentation
        plain = _PlainTimm().cuda().to(memory_format=torch.channels_last)
        add(
            "eager_timm_plain",
            "synthetic",
            bench_train(plain, "eager", b, _synthetic(b), warmup=6, steps=steps, augment=False),
        )
        del plain
        free_cuda()
    for mode, feed in itertools.product(modes, ("synthetic", "reader")):
        src = _synthetic(b) if feed == "synthetic" else _reader(split, b, workers, train=True)
        net, kind = (models["tdw"], "graph") if mode == "graph_tdw" else (model, mode)
        add(mode, feed, _guarded(partial(bench_train, net, kind, b, src, warmup=6, steps=steps),
                                 mode))  # fmt: skip
    if "graph" in modes and b == 256:
        src = _reader(split, b, workers, train=True)
        row = bench_train(model, "graph", b, src, warmup=6, steps=steps, sync_each_step=True)
        add("graph", "reader", row, host_sync="every step")


def run_bench(out_path: str, *, batch_sizes: tuple[int, ...] = (256, 1024),
              modes: tuple[str, ...] = MODES, num_workers: int = 8, num_samples: int = 98304,
              steps: int = 0, probe: bool = True, work_dir: str | None = None,
              whole_run: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the GPU benchmark and write its JSON to ``out_path``.

    With ``whole_run`` (the keyword arguments of ``whole_run.run_whole_run``) it
    measures a whole training run against its synthetic step instead.

    Args:
        out_path: result JSON.
        batch_sizes: training batch sizes (inference always runs at 1024).
        modes: any of eager, compile, graph.
        num_workers: loader worker processes of the (b) rows.
        num_samples: samples in the benchmark shards (each row's steps fit in one epoch).
        steps: timed steps per training row; 0: about 61k samples (at least 20 steps).
        probe: also run the depthwise probe.
        work_dir: where to write the shards (default: a temporary directory).
        whole_run: see above.

    Returns:
        The result document.

    Raises:
        ConfigError: no CUDA device, or too few samples for the timed steps of a row.
    """
    if whole_run is not None:
        from haloscope.bench.whole_run import run_whole_run

        return run_whole_run(out_path, work_dir=work_dir, **whole_run)
    if not torch.cuda.is_available():
        raise ConfigError("haloscope bench gpu needs a CUDA device; none is visible here")
    per_b = {b: steps or max(20, 61440 // b) for b in batch_sizes}
    infer_steps = num_samples // 1024 - 8
    if infer_steps < 10 or any((n + 7) * b > num_samples for b, n in per_b.items()):
        raise ConfigError(f"--num-samples {num_samples} is too small for {per_b} steps")
    tmp = tempfile.TemporaryDirectory(dir=work_dir)
    t0 = time.perf_counter()
    split = write_random_shards(Path(tmp.name) / "train", num_samples)
    doc: dict[str, Any] = {"env": gpu_env(), "settings": {
        "model": "haloscope build_model: timm convnext_tiny (random init) + meta MLP head (2 cols), "
                 "drop_path 0.1, dropout 0.1", "input": "3x64x64 float16 shards -> fp32 -> D4",
        "amp": "bf16 autocast", "memory_format": "channels_last",
        "optimizer": "AdamW fused capturable, 2 groups", "num_workers": num_workers,
        "num_samples": num_samples, "shard_write_s": round(time.perf_counter() - t0, 1),
        "feeds": {"synthetic": "4 device batches, cycled",
                  "reader": "ShardReader+build_loader, pinned, local disk (page cache)"}},
        "train": [], "infer": [], "loader": []}  # fmt: skip
    _warm_clocks()
    models = {"base": _model()}
    models["tdw"] = copy.deepcopy(models["base"])
    doc["settings"]["triton_depthwise_convs"] = use_triton_depthwise(models["tdw"])
    for b in batch_sizes:
        _train_rows(doc, models, split, b, modes, num_workers, per_b[b])
        doc["loader"].append(loader_rate(split, b, num_workers, per_b[b]))
    for mode, feed in itertools.product(modes, ("synthetic", "reader")):
        src = (
            _synthetic(1024)
            if feed == "synthetic"
            else _reader(split, 1024, num_workers, train=False)
        )
        net, kind = (models["tdw"], "graph") if mode == "graph_tdw" else (models["base"], mode)
        row = _guarded(partial(bench_infer, net, kind, 1024, src, warmup=6, steps=infer_steps),
                       mode)  # fmt: skip
        doc["infer"].append({"mode": mode, "batch_size": 1024, "feed": feed, **row})
        log.info("infer %s", doc["infer"][-1])
    doc["ratios"] = {"train": _ratios(doc["train"]), "infer": _ratios(doc["infer"])}
    if probe:
        doc["depthwise_probe"] = _guarded(
            lambda: {"rows": [r for b in batch_sizes for r in depthwise_probe(b)]}, "graph_tdw"
        )
    tmp.cleanup()
    atomic_write_text(out_path, json.dumps(doc, indent=1) + "\n")
    return doc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haloscope bench gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results/gpu.json")
    p.add_argument("--batch-sizes", default="256,1024", help="comma-separated training batches")
    p.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of: " + ",".join(MODES)
    )
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=98304)
    p.add_argument("--steps", type=int, default=0, help="timed steps per row (0: auto)")
    p.add_argument("--no-probe", action="store_true", help="skip the depthwise probe")
    p.add_argument("--work-dir", default=None,
                   help="where the benchmark shards go (--whole-run: the run, kept)")  # fmt: skip
    w = p.add_argument_group("whole run (--whole-run; write it to bench/results/whole_run.json)")
    w.add_argument("--whole-run", action="store_true",
                   help="time a whole `haloscope train` run against its synthetic graphed step")  # fmt: skip
    w.add_argument("--shards", default=None, help="shard root (train/, val/) of the run")
    w.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a tiny check)")
    w.add_argument("--arch", default="convnext_tiny", help="model of the run and the step")
    w.add_argument("--batch-size", type=int, default=256, help="global batch of both")
    w.add_argument("--seconds", type=float, default=60.0, help="how long the step runs alone")
    w.add_argument("--train-args", default="", help='more train flags, e.g. "--epochs 3"')
    return p


def parse_options(argv: list[str]) -> dict[str, Any]:
    """``run_bench`` keyword arguments from the flags after ``haloscope bench gpu``."""
    a = _parser().parse_args(argv)
    opts: dict[str, Any] = {"batch_sizes": tuple(int(x) for x in a.batch_sizes.split(",")),
                            "modes": tuple(a.modes.split(",")), "num_workers": a.num_workers,
                            "num_samples": a.num_samples, "steps": a.steps,
                            "probe": not a.no_probe, "work_dir": a.work_dir}  # fmt: skip
    if a.whole_run:
        opts["whole_run"] = {"shards": a.shards, "device": a.device, "arch": a.arch,
                             "batch_size": a.batch_size, "seconds": a.seconds,
                             "train_args": a.train_args}  # fmt: skip
    return opts


def main(argv: list[str]) -> int:
    """``python -m haloscope.bench.gpu`` flags; prints a one-line summary per row."""
    out = _parser().parse_args(argv).out
    opts = parse_options(argv)
    doc = run_bench(out, **opts)
    if "whole_run" in opts:
        keys = ("synthetic", "whole_run_over_synthetic", "whole_run_with_setup_over_synthetic")
        print(json.dumps({k: doc[k] for k in keys}))
        print(json.dumps({k: v for k, v in doc["whole_run"].items() if k.startswith("time/")}))
        return 0
    for kind in ("train", "infer"):
        for r in doc[kind]:
            if "error" in r:
                print(
                    f"{kind:5s} {r['mode']:16s} b{r['batch_size']:<5d} {r['feed']:14s} {r['error']}"
                )
                continue
            sync = " sync" if "host_sync" in r else ""
            print(
                f"{kind:5s} {r['mode']:16s} b{r['batch_size']:<5d} {r['feed'] + sync:14s} "
                f"{r['img_per_s']:>9.0f} img/s  wait {r['loader_wait_frac']:.3f}  "
                f"mem {r['max_mem_gib']:.1f} GiB  first {r['first_call_s']:.1f} s"
            )
    print(json.dumps({"loader": doc["loader"], "ratios": doc["ratios"],
                      "probe": doc.get("depthwise_probe")}, indent=None))  # fmt: skip
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main(__import__("sys").argv[1:]))
