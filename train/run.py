"""Assemble a training run from a resolved config: data, model, optimiser, resume, fit.

``run_training`` reads like nanoGPT's train.py: init dist -> seed -> data -> model ->
optimiser -> (resume) -> loop -> close, inside ``try/finally`` so the process group and
files are closed on any exit.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haloscope.atomic import atomic_write_text
from haloscope.config import config_to_dict
from haloscope.errors import CheckpointError, ConfigError
from haloscope.log import setup_logging
from haloscope.train import checkpoint as ckpt
from haloscope.train import data as tdata
from haloscope.train.augment import make_generator
from haloscope.train.config import RESUME_MUTABLE_KEYS, TrainConfig
from haloscope.train.curves import CURVES_NAME
from haloscope.train.dist import (
    DistEnv,
    all_gather_object,
    broadcast_module,
    init_distributed,
    make_grad_sync,
    shutdown,
    wrap_ddp,
)
from haloscope.train.ema import WeightEMA
from haloscope.train.loop import FitResult, RunContext, StopFlag, TrainState, catch_signals, fit
from haloscope.train.loss import LossFn, build_loss
from haloscope.train.metrics import MetricsWriter
from haloscope.train.model import build_model
from haloscope.train.optim import build_optimizer, build_scheduler, warmup_steps
from haloscope.train.step import (
    EvalStep,
    TrainStep,
    make_eval_step,
    make_train_step,
    resolve_step_mode,
)
from haloscope.train.validate import EarlyStopping

__all__ = [
    "seed_everything",
    "amp_dtype_for",
    "channels_last_for",
    "build_state",
    "restore_state",
    "run_training",
]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) identically on every rank."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype_for(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or None for fp32 (default: bf16 on CUDA, fp32 on CPU)."""
    use = cfg.run.bf16 if cfg.run.bf16 is not None else device.type == "cuda"
    return torch.bfloat16 if use else None


def channels_last_for(cfg: TrainConfig, device: torch.device) -> bool:
    """Channels-last memory format (default: on for CUDA; off on CPU, where it is 3x slower)."""
    return cfg.run.channels_last if cfg.run.channels_last is not None else device.type == "cuda"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def build_state(
    cfg: TrainConfig, env: DistEnv, model_args: dict[str, Any], steps: int
) -> TrainState:
    """Fresh model, optimiser, schedule, augmentation generator, early stopping, and the
    weights' moving average (``--ema-decay``; a copy of the fresh model, the same on every
    rank)."""
    seed_everything(cfg.run.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    model = build_model(**model_args).to(env.device)
    if channels_last_for(cfg, env.device):
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.run.seed + 1000 * env.rank + 1)  # per-rank dropout/drop-path stream
    o = cfg.optim
    optimizer = build_optimizer(model, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    total = cfg.run.epochs * steps
    scheduler = build_scheduler(
        optimizer,
        total_steps=total,
        lr=o.lr,
        min_lr=o.min_lr,
        warmup=warmup_steps(total, o.warmup_steps, o.warmup_frac),
    )
    aug_gen = make_generator(cfg.run.seed, env.rank, env.device) if cfg.run.augment else None
    early = EarlyStopping(cfg.run.early_stopping_patience, cfg.run.monitor, warn=env.is_main)
    ema = WeightEMA(model, o.ema_decay) if o.ema_decay > 0 else None
    if ema is not None:
        log.info(
            "EMA of the weights, decay %g: validation, best.pt and inference use it", o.ema_decay
        )
    return TrainState(model, model, optimizer, scheduler, aug_gen, early, ema)


ADDED_KEYS: dict[str, Any] = {"optim.ema_decay": 0.0}
"""Config keys added after checkpoints were first written, with the value that older runs
ran with: a checkpoint whose config lacks one resumes as if it held that value."""


def restore_state(
    state: TrainState, payload: dict[str, Any], cfg: TrainConfig, env: DistEnv
) -> None:
    """Load last.pt into a fresh state (before DDP wrapping), refusing incompatible runs.

    Raises:
        ConfigError: the run's config differs from the checkpoint's in a key that a resume
            may not change.
        CheckpointError: different world size, or state that does not fit the model.
    """
    saved = {**ADDED_KEYS, **_flat(json.loads(payload["config"]))}
    now = _flat(config_to_dict(cfg))
    diff = sorted(
        k
        for k in set(saved) | set(now)
        if k not in RESUME_MUTABLE_KEYS and saved.get(k) != now.get(k)
    )
    if diff:
        pairs = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
        raise ConfigError(
            f"--resume with a different config ({pairs}); start a new --out-dir to change these"
        )
    progress = payload["progress"]
    if progress["world_size"] != env.world_size:
        raise CheckpointError(
            f"last.pt was written by {progress['world_size']} ranks, this run "
            f"has {env.world_size}; resume with the same number of processes"
        )
    try:
        state.raw_model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
        state.scheduler.load_state_dict(payload["scheduler"])
        if state.ema is not None:
            state.ema.load_state_dict(payload["ema_model"], progress["global_step"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"last.pt does not fit this model/optimiser: {exc}") from None
    state.early.load_state_dict(payload["early_stopping"])
    state.val_metrics = dict(payload.get("val_metrics") or {})
    state.epoch, state.step_in_epoch = progress["epoch"], progress["step_in_epoch"]
    state.global_step = progress["global_step"]
    state.loader_state = payload["loader"]
    per_rank = payload.get("rng_per_rank")  # older checkpoints hold rank 0's only
    ckpt.restore_rng(per_rank[env.rank] if per_rank else payload["rng"], state.aug_gen)


def _resumes(cfg: TrainConfig, env: DistEnv, run_dir: Path) -> bool:
    """Whether this run continues from last.pt: ``--resume`` (yes) always, ``--resume auto``
    when last.pt exists (on every rank alike: OUT_DIR must be shared)."""
    if cfg.run.resume != "auto":
        return cfg.run.resume == "yes"
    seen = set(all_gather_object((run_dir / "last.pt").is_file(), env))
    if len(seen) > 1:
        raise ConfigError(
            f"--resume auto: {run_dir / 'last.pt'} exists on some ranks only; "
            "--out-dir must be on a filesystem that every node shares"
        )
    return seen.pop()


def _prepare_run_dir(cfg: TrainConfig, env: DistEnv, resume: bool) -> Path:
    run_dir = Path(cfg.run.out_dir)
    if not resume and not cfg.run.overwrite and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"--out-dir {run_dir} already holds last.pt: pass --resume to continue "
            "it, --overwrite to start over, or choose a new --out-dir"
        )
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            _remove_earlier_run(run_dir)
        text = json.dumps(config_to_dict(cfg), indent=2) + "\n"
        atomic_write_text(run_dir / "config.resolved.json", text)
    return run_dir


TIMING_NAME = "time_breakdown.json"
"""The run's time breakdown (``metrics.TimeBreakdown``), written next to the checkpoints."""
RUN_FILES = ("last.pt", "best.pt", *MetricsWriter.FILES, CURVES_NAME, TIMING_NAME)
"""What a run writes in OUT_DIR besides its config (and the ``tb`` folder)."""


def _remove_earlier_run(run_dir: Path) -> None:
    """A fresh start (``--overwrite``, or an earlier run killed before its first checkpoint)
    replaces the earlier run's files: the metric files are appended to, and would otherwise
    mix both runs' rows; a stale best.pt would stand until the first validation."""
    stale = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    tb = run_dir / "tb"
    if tb.is_dir():
        stale.append(tb)
    if not stale:
        return
    log.info(
        "%s: starting afresh, removing the earlier run's %s",
        run_dir,
        ", ".join(p.name for p in stale),
    )
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _log_start(ctx: RunContext, num_train: int, num_val: int) -> None:
    cfg, env = ctx.cfg, ctx.env
    log.info(
        "training %s on %s: %d train / %d val samples, %d steps/epoch x %d epochs, "
        "world_size %d, %s",
        cfg.model.arch,
        env.device,
        num_train,
        num_val,
        ctx.steps_per_epoch,
        cfg.run.epochs,
        env.world_size,
        "bf16" if ctx.amp_dtype else "fp32",
    )


def _setup(cfg: TrainConfig, env: DistEnv, stop: StopFlag) -> tuple[TrainState, RunContext]:
    if not cfg.run.out_dir:
        raise ConfigError("--out-dir is required")
    resume = _resumes(cfg, env, Path(cfg.run.out_dir))
    run_dir = _prepare_run_dir(cfg, env, resume)
    root = tdata.resolve_shards_root(cfg.data.shards, cfg.data.data_root)
    train_reader, val_reader = tdata.build_readers(cfg, env, root)
    manifest = train_reader.manifest
    tdata.check_splits(cfg, manifest, val_reader.manifest)
    cols, mean, std = tdata.resolve_meta(cfg, manifest)
    model_args = {
        "arch": cfg.model.arch,
        "meta_cols": cols,
        "meta_mean": mean,
        "meta_std": std,
        "dropout": cfg.model.dropout,
        "drop_path_rate": cfg.model.drop_path_rate,
    }
    steps = tdata.steps_per_epoch(cfg, train_reader.batches_per_rank())
    state = build_state(cfg, env, model_args, steps)
    if resume:
        # on the CPU: RNG states must stay CPU tensors (optimizer state follows the params)
        restore_state(state, ckpt.load_checkpoint(run_dir / "last.pt"), cfg, env)
        log.info(
            "resumed from %s at epoch %d step %d",
            run_dir / "last.pt",
            state.epoch,
            state.step_in_epoch,
        )
    static = {
        "model_args": model_args,
        "config": json.dumps(config_to_dict(cfg)),
        "preprocess": tdata.preprocess_record(manifest),
        "meta": {"cols": cols, "mean": mean, "std": std},
    }
    writer = MetricsWriter(run_dir, enabled=env.is_main, tensorboard=cfg.run.tensorboard)
    loss_fn = build_loss(cfg.loss)
    amp, channels_last = amp_dtype_for(cfg, env.device), channels_last_for(cfg, env.device)
    ctx = RunContext(
        cfg=cfg,
        env=env,
        run_dir=run_dir,
        train_reader=train_reader,
        val_reader=val_reader,
        make_loader=tdata.loader_factory(cfg, env),
        loss_fn=loss_fn,
        writer=writer,
        static=static,
        steps_per_epoch=steps,
        amp_dtype=amp,
        channels_last=channels_last,
        stop=stop,
        step=_train_step(cfg, env, state, loss_fn, amp, channels_last),
        eval_step=_eval_step(cfg, env, state, channels_last),
    )
    _log_start(ctx, manifest.num_samples, val_reader.manifest.num_samples)
    return state, ctx


def _train_step(
    cfg: TrainConfig,
    env: DistEnv,
    state: TrainState,
    loss_fn: LossFn,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> TrainStep:
    """The run's ``TrainStep``: one CUDA graph per step where it applies (CUDA, no --compile),
    else eager (or compiled) on the DDP-wrapped model.

    On several ranks the graph holds the gradient all-reduce too (``make_grad_sync``): the
    model is then not wrapped in DDP, and rank 0's weights are broadcast once.
    """
    sync = make_grad_sync(env) if cfg.run.cuda_graphs and not cfg.run.compile else None
    kind = "eager"
    if cfg.run.cuda_graphs and not cfg.run.compile:
        kind = resolve_step_mode(
            "auto", env.device, distributed=env.is_distributed, grad_sync=sync is not None
        )
    if kind == "graph":
        broadcast_module(state.raw_model, env)
        state.model = state.raw_model
    else:
        state.model, sync = wrap_ddp(state.raw_model, env), None
        kind = "compile" if cfg.run.compile else "eager"
    return make_train_step(
        state.model,
        loss_fn,
        state.optimizer,
        cfg.data.per_rank_batch(env.world_size),
        device=env.device,
        mode=kind,
        distributed=env.is_distributed,
        augment=cfg.run.augment,
        aug_generator=state.aug_gen,
        bf16=amp_dtype is not None,
        channels_last=channels_last,
        max_grad_norm=cfg.optim.grad_clip,
        grad_sync=sync,
        metrics_slots=cfg.run.sync_every,
        ema=state.ema,
    )


def _eval_step(cfg: TrainConfig, env: DistEnv, state: TrainState, channels_last: bool) -> EvalStep:
    """Validation's step: bf16 autocast on CUDA with the model's fp32 logit layer (as infer
    scores the test split; no bf16 ties), a CUDA graph at the per-rank val batch where the
    training step may be graphed (CUDA, no --compile), else eager fp32 on the unwrapped model
    (the weights' moving average with --ema-decay: ``TrainState.eval_model``)."""
    graph = env.device.type == "cuda" and cfg.run.cuda_graphs and not cfg.run.compile
    return make_eval_step(
        state.eval_model,
        device=env.device,
        mode="graph" if graph else "eager",
        batch_size=cfg.data.per_rank_batch(env.world_size, val=True),
        bf16=None,
        channels_last=channels_last,
    )


def run_training(cfg: TrainConfig) -> int:
    """Train with ``cfg``; returns the exit code (0 done/early stop/SIGTERM/SIGUSR1, 130
    SIGINT)."""
    env = init_distributed(cfg.run.device)
    setup_logging(env.rank)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
    stop = StopFlag()
    state = ctx = None
    try:
        with catch_signals(stop):
            state, ctx = _setup(cfg, env, stop)
            result = fit(state, ctx)
        return _report(result, ctx)
    finally:
        if ctx is not None:
            ctx.writer.close()
        # the graphed step (ctx.step) holds the NCCL communicator: it must be gone (collected
        # by shutdown) before the process group is destroyed
        state = ctx = None
        shutdown(env)


def _write_timing(result: FitResult, ctx: RunContext) -> None:
    """``RUN/time_breakdown.json`` and a ``kind: "run"`` record in metrics.jsonl (main rank)."""
    t = result.timing
    doc = {
        "reason": result.reason,
        "world_size": ctx.env.world_size,
        "global_batch_size": ctx.cfg.data.batch_size,
        "device": str(ctx.env.device),
        "step_mode": getattr(ctx.step, "mode", None),
        **t,
    }
    ctx.writer.write("run", {"global_step": result.global_step, **doc}, to_tensorboard=False)
    if ctx.env.is_main:
        atomic_write_text(ctx.run_dir / TIMING_NAME, json.dumps(doc, indent=1) + "\n")
        parts = ", ".join(
            f"{k} {100 * t[f'time/{k}_frac']:.1f}%"
            for k in ("step", "loader_wait", "validation", "checkpoint", "other")
        )
        log.info(
            "%d steps in %.1f s (first step to last checkpoint, after %.1f s of setup: loader "
            "start and graph captures), %.0f img/s: %s",
            t["run/num_steps"],
            t["time/total_s"],
            t["time/setup_s"],
            t["perf/img_per_s"],
            parts,
        )


def _report(result: FitResult, ctx: RunContext) -> int:
    _write_timing(result, ctx)
    if result.reason == "signal":
        name = signal.Signals(result.signum).name if result.signum else "signal"
        log.warning(
            "stopped by %s at epoch %d, global step %d; %s saved, continue with --resume",
            name,
            result.epoch,
            result.global_step,
            ctx.run_dir / "last.pt",
        )
        return 130 if result.signum == signal.SIGINT else 0
    log.info(
        "training %s after epoch %d (global step %d); best epoch %d -> %s",
        result.reason.replace("_", " "),
        result.epoch,
        result.global_step,
        result.best_epoch,
        ctx.run_dir / "best.pt",
    )
    return 0
