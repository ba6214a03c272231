"""``haloscope bench multigpu``: data-parallel scaling on 1, 2, 4, 8 GPUs of one host.

The driver (``run_bench``) starts one ``torchrun --standalone --nproc-per-node N`` job per GPU
count (1, 2, 4, 8 up to the GPUs present, or ``--gpus``) of this module's worker, over the
same shards and the same per-GPU batch, and writes one JSON with the scaling efficiency
``img/s(N) / (N * img/s(1))``.

Each worker (one process per GPU, nccl):

1. iterates one whole training epoch of its rank through the real reader (no GPU work) and
   gathers the batch counts: every rank must get the same number;
2. trains for ``steps`` steps after ``warmup`` ones with the real reader and its workers, in
   two step modes: ``graph`` (the trainer's default: one CUDA graph per step, the gradient
   all-reduce captured inside, ``dist.make_grad_sync``) and ``eager`` (DDP); records img/s,
   loader-wait fraction, and whether the weights are still identical on every rank;
3. checks the graphed multi-GPU step against eager DDP on the same 10 batches (augmentation
   and stochastic depth off): per-step losses and the weights' movement;
4. validates the checkpoint (``--ckpt``, else the seeded initial weights) over the whole val
   split with the trainer's ``validate`` (sharded over ranks, gathered): the metrics must
   equal the one-GPU ones;
5. scores the test split (or val) with the inference step (bf16, CUDA graph, batch 1024)
   through the real reader: img/s over all ranks.

Without ``--shards`` the driver writes random shards (the real writer) to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from haloscope.atomic import atomic_write_text
from haloscope.bench.gpu import free_cuda, gpu_env, write_random_shards
from haloscope.errors import ConfigError
from haloscope.log import setup_logging
from haloscope.shards.manifest import load_manifest
from haloscope.shards.read import ShardReader, build_loader
from haloscope.train.checkpoint import load_checkpoint
from haloscope.train.dist import (
    all_gather_1d,
    barrier,
    init_distributed,
    make_grad_sync,
    shutdown,
    wrap_ddp,
)
from haloscope.train.loss import build_loss
from haloscope.train.model import build_model
from haloscope.train.optim import build_optimizer
from haloscope.train.step import make_eval_step, make_train_step
from haloscope.train.validate import validate

__all__ = ["run_bench", "parse_options", "main"]

log = logging.getLogger(__name__)
CHECK_STEPS = 10


# ----------------------------------------------------------------------------- worker side


def _build(
    model_args: dict[str, Any],
    weights: dict[str, torch.Tensor] | None,
    device: torch.device,
    **override: Any,
) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model(**{**model_args, **override})
    if weights is not None:
        model.load_state_dict(weights)
    return model.to(device).to(memory_format=torch.channels_last)


def _model_source(args: argparse.Namespace) -> tuple[dict[str, Any], dict | None]:
    """Model arguments and weights: from ``--ckpt``, else ConvNeXt-Tiny on the manifest's meta."""
    if args.ckpt:
        payload = load_checkpoint(args.ckpt)
        return dict(payload["model_args"]), payload["model"]
    m = load_manifest(Path(args.shards) / "train")
    return {
        "arch": "convnext_tiny",
        "meta_cols": list(m.meta_columns),
        "meta_mean": [float(v) for v in m.meta_mean],
        "meta_std": [float(v) for v in m.meta_std],
        "dropout": 0.1,
        "drop_path_rate": 0.1,
    }, None


def _gather(values: list[float], env: Any) -> list[list[float]]:
    """Every rank's ``values`` (same length), as a list per rank."""
    t = all_gather_1d(torch.tensor(values, dtype=torch.float64, device=env.device), env)
    return t.view(env.world_size, len(values)).tolist()


def _train_reader(args: argparse.Namespace, env: Any, epoch: int) -> Any:
    """This rank's shuffled reader of the train split at ``epoch``, per-GPU batch."""
    reader = ShardReader(
        Path(args.shards) / "train",
        batch_size=args.batch_size,
        seed=0,
        rank=env.rank,
        world_size=env.world_size,
    )
    reader.set_epoch(epoch)
    return reader


def _count_epoch(args: argparse.Namespace, env: Any) -> dict[str, Any]:
    reader = _train_reader(args, env, epoch=0)
    t0, batches, samples = time.perf_counter(), 0, 0
    for batch in build_loader(reader, num_workers=args.workers, pin_memory=False):
        batches += 1
        samples += int(batch["valid"].sum())
    counts = _gather([batches, samples, time.perf_counter() - t0], env)
    return {
        "expected_batches_per_rank": reader.batches_per_rank(),
        "batches_per_rank": [int(c[0]) for c in counts],
        "samples_per_rank": [int(c[1]) for c in counts],
        "loader_only_s": round(max(c[2] for c in counts), 2),
        "equal": len({int(c[0]) for c in counts}) == 1
        and int(counts[0][0]) == reader.batches_per_rank(),
    }


def _make_step(
    model: torch.nn.Module, mode: str, args: argparse.Namespace, env: Any, augment: bool = True
) -> Any:
    opt = build_optimizer(model, lr=args.lr, weight_decay=0.05)
    loss = build_loss()  # the default LossConfig: focal
    common = {
        "device": env.device,
        "distributed": env.is_distributed,
        "augment": augment,
        "bf16": True,
        "channels_last": True,
        "max_grad_norm": 1.0,
    }
    if mode == "graph":
        return make_train_step(
            model, loss, opt, args.batch_size, mode="graph", grad_sync=make_grad_sync(env), **common
        )
    return make_train_step(wrap_ddp(model, env), loss, opt, args.batch_size, mode="eager", **common)


def _weights_digest(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum() * (i + 1) for i, p in enumerate(model.parameters())))


def _train_row(
    mode: str,
    args: argparse.Namespace,
    env: Any,
    model_args: dict,
    weights: dict | None,
    epoch: int,
) -> dict[str, Any]:
    model = _build(model_args, weights, env.device)
    step = _make_step(model, mode, args, env)
    reader = _train_reader(args, env, epoch)
    it = iter(build_loader(reader, num_workers=args.workers, pin_memory=True))
    torch.cuda.reset_peak_memory_stats(env.device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        b = next(it)
        step.step(b["image"], b["meta"], b["label"])
    torch.cuda.synchronize(env.device)
    first_s = time.perf_counter() - t0
    barrier(env)
    wait, t0 = 0.0, time.perf_counter()
    for _ in range(args.steps):
        tw = time.perf_counter()
        b = next(it)
        wait += time.perf_counter() - tw
        out = step.step(b["image"], b["meta"], b["label"])
    torch.cuda.synchronize(env.device)
    dt = time.perf_counter() - t0
    loss = float(out["loss"])
    per_rank = _gather([dt, wait, _weights_digest(model), loss], env)
    del it, step, model
    free_cuda()
    slowest = max(r[0] for r in per_rank)
    total = env.world_size * args.batch_size * args.steps / slowest
    return {
        "mode": mode,
        "img_per_s": round(total, 1),
        "img_per_s_per_gpu": round(total / env.world_size, 1),
        "step_ms": round(1e3 * slowest / args.steps, 3),
        "loader_wait_frac": round(max(r[1] / r[0] for r in per_rank), 4),
        "weights_in_sync": len({r[2] for r in per_rank}) == 1,
        "last_loss_per_rank": [round(r[3], 5) for r in per_rank],
        "warmup_s": round(first_s, 2),
        "max_mem_gib": round(torch.cuda.max_memory_allocated(env.device) / 2**30, 2),
    }


def _graph_vs_eager(
    args: argparse.Namespace, env: Any, model_args: dict, weights: dict | None
) -> dict[str, Any]:
    """The graphed step with captured all-reduce against eager DDP on the same batches."""
    batches = []
    for b in build_loader(_train_reader(args, env, epoch=99), num_workers=0, pin_memory=False):
        batches.append({k: b[k].clone() for k in ("image", "meta", "label")})
        if len(batches) == CHECK_STEPS:
            break
    runs = {}
    for mode in ("eager", "graph"):
        model = _build(model_args, weights, env.device, dropout=0.0, drop_path_rate=0.0)
        start = [p.detach().clone() for p in model.parameters()]
        step = _make_step(model, mode, args, env, augment=False)
        losses = [float(step.step(b["image"], b["meta"], b["label"])["loss"]) for b in batches]
        runs[mode] = (losses, [p.detach().clone() for p in model.parameters()], start)
        del step, model
        free_cuda()
    (le, we, start), (lg, wg, _) = runs["eager"], runs["graph"]
    moved = torch.sqrt(sum(((a - s) ** 2).sum() for a, s in zip(we, start, strict=True)))
    diff = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(we, wg, strict=True)))
    rel_loss = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(le, lg, strict=True))
    rel_w = float(diff / moved.clamp_min(1e-30))
    return {
        "steps": CHECK_STEPS,
        "losses_eager": [round(v, 6) for v in le],
        "losses_graph": [round(v, 6) for v in lg],
        "max_rel_loss_diff": round(rel_loss, 6),
        "weight_diff_over_movement": round(rel_w, 6),
        "ok": rel_loss < 0.02 and rel_w < 0.05,
    }


def _eval_rows(
    args: argparse.Namespace, env: Any, model_args: dict, weights: dict | None
) -> dict[str, Any]:
    root = Path(args.shards)
    model = _build(model_args, weights, env.device).eval()

    def loader(split: str, batch: int) -> Any:
        r = ShardReader(
            root / split,
            batch_size=batch,
            seed=0,
            rank=env.rank,
            world_size=env.world_size,
            shuffle=False,
            drop_last=False,
        )
        return build_loader(r, num_workers=args.workers, pin_memory=True)

    barrier(env)
    t0 = time.perf_counter()
    metrics = validate(model, loader("val", 1024), env)
    val_s = time.perf_counter() - t0
    split = "test" if (root / "test" / "manifest.json").is_file() else "val"
    predict = make_eval_step(
        model, device=env.device, batch_size=args.infer_batch_size, mode="graph"
    )
    feed = loader(split, args.infer_batch_size)
    warm = next(iter(loader(split, args.infer_batch_size)))
    predict.logits(warm["image"], warm["meta"])  # capture outside the timing
    torch.cuda.synchronize(env.device)
    barrier(env)
    t0, n, total = time.perf_counter(), 0, torch.zeros((), dtype=torch.float64, device=env.device)
    for b in feed:
        logits = predict.logits(b["image"], b["meta"])
        valid = b["valid"].to(env.device, non_blocking=True)
        total += logits.double()[valid].sum()
        n += int(b["valid"].sum())
    torch.cuda.synchronize(env.device)
    dt = time.perf_counter() - t0
    per_rank = _gather([dt, n, float(total)], env)
    slowest = max(r[0] for r in per_rank)
    del predict, model
    free_cuda()
    return {
        "val": {k: (round(v, 8) if isinstance(v, float) else v) for k, v in metrics.items()},
        "val_img_per_s": round(metrics["val/num"] / val_s, 1),
        "infer": {
            "split": split,
            "batch_size": args.infer_batch_size,
            "samples": int(sum(r[1] for r in per_rank)),
            "img_per_s": round(sum(r[1] for r in per_rank) / slowest, 1),
            "logit_sum": sum(r[2] for r in per_rank),
        },
    }


def _worker(args: argparse.Namespace) -> None:
    env = init_distributed("cuda")
    setup_logging(env.rank)
    try:
        model_args, weights = _model_source(args)
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        doc: dict[str, Any] = {"world_size": env.world_size, "devices": names[: env.world_size]}
        doc["epoch_batches"] = _count_epoch(args, env)
        doc["train"] = [
            _train_row(m, args, env, model_args, weights, epoch=1 + i)
            for i, m in enumerate(args.modes.split(","))
        ]
        if env.is_distributed:
            doc["graph_vs_eager_ddp"] = _graph_vs_eager(args, env, model_args, weights)
        doc.update(_eval_rows(args, env, model_args, weights))
        if env.is_main:
            atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    finally:
        shutdown(env)


# ----------------------------------------------------------------------------- driver side


def _counts(gpus: str | None) -> list[int]:
    have = torch.cuda.device_count()
    if gpus:
        try:
            counts = sorted({int(g) for g in gpus.split(",")})
        except ValueError:
            raise ConfigError(f"--gpus must be a comma list of integers, got {gpus!r}") from None
        if not counts or counts[0] < 1 or counts[-1] > have:
            raise ConfigError(f"--gpus {gpus}: this machine has {have} GPU(s)")
        return counts
    if have < 2:
        raise ConfigError(f"bench multigpu needs at least 2 GPUs, this machine has {have}")
    return [n for n in (1, 2, 4, 8) if n <= have]


def _efficiency(runs: dict[int, dict[str, Any]], pick: Any) -> dict[str, Any]:
    base = pick(runs[min(runs)])
    out = {str(n): {"img_per_s": pick(r)} for n, r in runs.items()}
    for n, r in runs.items():
        out[str(n)]["efficiency"] = round(pick(r) / (n / min(runs) * base), 4) if base else None
    return out


def _scaling(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Img/s and efficiency per GPU count: training per step mode, inference, validation."""
    scaling = {
        f"train_{row['mode']}": _efficiency(
            runs,
            lambda r, m=row["mode"]: next(x["img_per_s"] for x in r["train"] if x["mode"] == m),
        )
        for row in runs[min(runs)]["train"]
    }
    scaling["infer"] = _efficiency(runs, lambda r: r["infer"]["img_per_s"])
    scaling["validate"] = _efficiency(runs, lambda r: r["val_img_per_s"])
    return scaling


def _checks(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """What must hold on every GPU count: equal batches, weights in sync, equal val metrics."""
    base = runs[min(runs)]
    val_keys = [k for k in base["val"] if k != "val/wall_s"]
    return {
        "equal_batch_counts": all(r["epoch_batches"]["equal"] for r in runs.values()),
        "weights_in_sync": all(x["weights_in_sync"] for r in runs.values() for x in r["train"]),
        "graph_vs_eager_ddp_ok": all(
            r["graph_vs_eager_ddp"]["ok"] for r in runs.values() if "graph_vs_eager_ddp" in r
        ),
        "val_metrics_max_abs_diff": max(
            (abs(r["val"][k] - base["val"][k]) for r in runs.values() for k in val_keys),
            default=0.0,
        ),
        "val_num_equal": len({r["val"]["val/num"] for r in runs.values()}) == 1,
        "infer_samples_equal": len({r["infer"]["samples"] for r in runs.values()}) == 1,
    }


def _run_counts(counts: list[int], tmp_dir: Path, worker_args: list[str]) -> dict[int, dict]:
    """One torchrun job of the worker per GPU count; its JSON result per count."""
    runs: dict[int, dict[str, Any]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in counts:
        part = tmp_dir / f"gpus{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n}", "-m", "haloscope.bench.multigpu", "--worker",
               "--out", str(part), *worker_args]  # fmt: skip
        log.info("bench multigpu: %d GPU(s)", n)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise ConfigError(
                f"bench multigpu: the {n}-GPU torchrun job failed "
                f"(exit {proc.returncode}); its log is above"
            )
        runs[n] = json.loads(part.read_text())
        runs[n]["wall_s"] = round(time.perf_counter() - t0, 1)
    return runs


def run_bench(
    out_path: str,
    *,
    shards: str | None = None,
    ckpt: str | None = None,
    gpus: str | None = None,
    batch_size: int = 256,
    infer_batch_size: int = 1024,
    steps: int = 200,
    warmup: int = 30,
    workers: int = 6,
    modes: str = "graph,eager",
    lr: float = 1e-4,
) -> dict[str, Any]:
    """Run the worker on each GPU count and write the scaling JSON to ``out_path``."""
    counts = _counts(gpus)
    tmp = tempfile.TemporaryDirectory(prefix="haloscope-multigpu-")
    if shards is None:
        root = Path(tmp.name) / "shards"
        largest = max(counts) * batch_size * (steps + warmup + 2)
        for split, n in (("train", largest), ("val", 16384), ("test", 65536)):
            write_random_shards(root / split, n, seed={"train": 0, "val": 1, "test": 2}[split])
        shards = str(root)
    worker_args = ["--shards", shards, "--batch-size", str(batch_size),
                   "--infer-batch-size", str(infer_batch_size), "--steps", str(steps),
                   "--warmup", str(warmup), "--workers", str(workers), "--modes", modes,
                   "--lr", str(lr)] + (["--ckpt", ckpt] if ckpt else [])  # fmt: skip
    runs = _run_counts(counts, Path(tmp.name), worker_args)
    tmp.cleanup()
    doc = {
        "bench": "multigpu",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **gpu_env(),
        "gpus_present": torch.cuda.device_count(),
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
        "shards": "random" if tmp.name in shards else "real",
        "checkpoint": bool(ckpt),
        "batch_size_per_gpu": batch_size,
        "infer_batch_size": infer_batch_size,
        "steps": steps,
        "warmup": warmup,
        "loader_workers_per_gpu": workers,
        "scaling": _scaling(runs),
        "checks": _checks(runs),
        "runs": {str(n): r for n, r in runs.items()},
    }
    atomic_write_text(out_path, json.dumps(doc, indent=2) + "\n")
    return {k: doc[k] for k in ("device", "gpus_present", "scaling", "checks")}


# ----------------------------------------------------------------------------- command line


def build_parser(worker: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="haloscope bench multigpu",
        description="Data-parallel scaling on 1..N GPUs of this host (one torchrun job per "
        "GPU count): training img/s (graphed step with the all-reduce captured, and eager "
        "DDP), inference img/s, equal batch counts, val metrics equal to one GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--shards",
        default=None,
        help="shards root with train/ and val/ (test/ optional); none: random shards",
    )
    p.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint whose weights and model settings to use; none: seeded init",
    )
    p.add_argument(
        "--gpus", default=None, help="GPU counts, e.g. 1,2; none: those of 1,2,4,8 present"
    )
    p.add_argument("--batch-size", type=int, default=256, help="training batch per GPU")
    p.add_argument("--infer-batch-size", type=int, default=1024, help="inference batch per GPU")
    p.add_argument("--steps", type=int, default=200, help="timed training steps per mode")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (capture included)")
    p.add_argument("--workers", type=int, default=6, help="loader processes per GPU")
    p.add_argument("--modes", default="graph,eager", help="training step modes to time")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the timed steps")
    if worker:
        p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        p.add_argument("--out", required=True, help=argparse.SUPPRESS)
    return p


def parse_options(argv: list[str]) -> dict[str, Any]:
    """``haloscope bench multigpu`` options -> ``run_bench`` keyword arguments."""
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "infer_batch_size", "steps", "warmup"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0:
        raise ConfigError("--workers must be >= 0")
    if set(args.modes.split(",")) - {"graph", "eager"}:
        raise ConfigError(f"--modes takes graph and/or eager, got {args.modes!r}")
    for flag, path in (("--shards", args.shards), ("--ckpt", args.ckpt)):
        if path and not Path(path).exists():
            raise ConfigError(f"{flag} {path} does not exist")
    return vars(args)


def main(argv: list[str]) -> int:
    """The torchrun worker entry (``--worker``)."""
    args = build_parser(worker=True).parse_args(argv)
    _worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
