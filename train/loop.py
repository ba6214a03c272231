"""The training loop: one loop that owns cadence around the one step (``train/step.py``).

Every step, in every mode (eager on CPU or GPU, torch.compile, CUDA graph), is
``ctx.step.step(image, meta, label)``: a ``train.step.TrainStep`` running ``train_step``.
``fit`` runs epochs, validation, early stopping, checkpoints, metrics and stop requests.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from haloscope.errors import DataError
from haloscope.train import checkpoint as ckpt
from haloscope.train.config import TrainConfig
from haloscope.train.dist import (
    DistEnv,
    all_gather_object,
    all_reduce_max,
    all_reduce_mean,
    barrier,
)
from haloscope.train.failures import worker_batches
from haloscope.train.metrics import MetricsWriter
from haloscope.train.validate import EarlyStopping, validate

__all__ = ["TrainState", "RunContext", "StopFlag", "FitResult", "catch_signals",
           "start_batches", "checkpoint_payload", "fit"]  # fmt: skip

log = logging.getLogger(__name__)
_NONFINITE, _SIGNAL = 2, 1


@dataclass
class TrainState:
    """Everything that changes during training (and goes into last.pt)."""

    model: torch.nn.Module  # what the step calls: DDP and/or compiled wrapper
    raw_model: torch.nn.Module  # the plain LensFinder (state_dict, validation)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    aug_gen: torch.Generator | None
    early: EarlyStopping
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)
    loader_state: dict[str, Any] | None = None  # reader position to restore (resume only)


@dataclass
class RunContext:
    """What stays fixed during training."""

    cfg: TrainConfig
    env: DistEnv
    run_dir: Path
    train_reader: Any  # haloscope.shards.read.ShardReader (or the same protocol)
    val_reader: Any
    make_loader: Callable[[Any], Iterable[dict[str, Any]]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    writer: MetricsWriter
    static: dict[str, Any]  # model_args, config JSON, preprocess, meta (checkpoint constants)
    steps_per_epoch: int
    amp_dtype: torch.dtype | None
    channels_last: bool
    stop: StopFlag
    step: Any = None  # the train.step.TrainStep of the run (eager, compile or graph)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves last.pt and returns at the next step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum


@contextmanager
def catch_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGTERM and SIGINT to ``flag`` inside the block, restoring handlers after."""
    old = {s: signal.signal(s, flag) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class FitResult:
    """How training ended: ``completed``, ``early_stopped`` or ``signal``."""

    reason: str
    epoch: int
    global_step: int
    best_epoch: int
    signum: int | None = None


def checkpoint_payload(state: TrainState, ctx: RunContext) -> dict[str, Any]:
    """The full resume + inference payload of the current state."""
    return {
        "model": state.raw_model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "progress": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                     "global_step": state.global_step, "world_size": ctx.env.world_size},
        "loader": {"epoch": state.epoch, "batches_done": state.step_in_epoch,
                   "reader": ctx.train_reader.state_dict()},
        "rng": ckpt.capture_rng(state.aug_gen),
        "early_stopping": state.early.state_dict(),
        "val_metrics": dict(state.val_metrics),
        **ctx.static,
    }  # fmt: skip


def _save(state: TrainState, ctx: RunContext, *names: str) -> None:
    # every rank's RNG streams (dropout, drop-path, D4), so each rank resumes its own
    rng_per_rank = all_gather_object(ckpt.capture_rng(state.aug_gen), ctx.env)
    if ctx.env.is_main:
        payload = {**checkpoint_payload(state, ctx), "rng_per_rank": rng_per_rank}
        for name in names:
            ckpt.save_checkpoint(ctx.run_dir / name, payload)
    barrier(ctx.env)


def start_batches(batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Start a loader (forking its workers) RNG-neutrally and shielded from stop signals.

    The DataLoader draws its worker base seed from the global torch RNG when its iterator
    starts (at the first ``next``); that draw is undone so dropout and stochastic depth see
    the same stream in a resumed run. SIGINT/SIGTERM are blocked while the workers fork, so
    the workers inherit the block and never die of a signal sent to the whole process group
    (a terminal's Ctrl-C, ``kill -- -PGID``): only the main process handles it. A worker's
    error is re-raised with its own message once the workers are shut down
    (``failures.worker_batches``: blocking SIGTERM, they would otherwise outlive the run).
    """
    rng = torch.get_rng_state()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    it = worker_batches(iter(batches))  # a worker's error as one line, workers shut down
    try:
        first = next(it)
    except StopIteration:
        return iter(())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        torch.set_rng_state(rng)
    return itertools.chain([first], it)


def _epoch_batches(state: TrainState, ctx: RunContext) -> Iterator[dict[str, Any]]:
    """This epoch's train batches from the current position."""
    reader = ctx.train_reader
    reader.set_epoch(state.epoch)
    if state.loader_state is not None and state.step_in_epoch > 0:
        reader.load_state_dict(state.loader_state["reader"])  # mid-epoch resume
    state.loader_state = None
    return start_batches(ctx.make_loader(reader))


def _stop_code(loss: float, ctx: RunContext) -> int:
    code = _NONFINITE if not math.isfinite(loss) else (_SIGNAL if ctx.stop.signum else 0)
    return all_reduce_max(code, ctx.env)


def train_one_epoch(state: TrainState, ctx: RunContext) -> bool:
    """Run the rest of the current epoch; returns False when a stop signal arrived.

    Raises:
        DataError: the loss became non-finite (nothing is saved after that step).
    """
    cfg, env = ctx.cfg, ctx.env
    n = ctx.steps_per_epoch
    if state.step_in_epoch >= n:
        return True
    state.model.train()  # validation leaves the model in eval mode
    it = _epoch_batches(state, ctx)
    bar = tqdm(total=n, initial=state.step_in_epoch, desc=f"epoch {state.epoch}",
               disable=not (env.is_main and cfg.run.progress), dynamic_ncols=True)  # fmt: skip
    t_last = time.perf_counter()
    try:
        while state.step_in_epoch < n:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                raise DataError(
                    f"the train loader ended after {state.step_in_epoch} of {n} "
                    f"batches in epoch {state.epoch}; check the shards"
                ) from None
            except Exception:
                if ctx.stop.signum is not None:  # Ctrl-C also reached the loader workers
                    return False
                raise
            wait_s = time.perf_counter() - t0
            out = ctx.step.step(batch["image"], batch["meta"], batch["label"])
            loss, grad_norm = out["loss"], out["grad_norm"]
            loss_value = float(loss.item())
            code = _stop_code(loss_value, ctx)
            if code >= _NONFINITE:
                raise DataError(
                    f"non-finite training loss at epoch {state.epoch}, step {state.step_in_epoch} "
                    f"of the epoch (batch {state.step_in_epoch} of this rank's epoch order, "
                    f"global step {state.global_step}); stopped without saving: last.pt and "
                    "best.pt keep the last good state. Check the shards or lower --lr."
                )
            lr = float(state.optimizer.param_groups[0]["lr"])  # a tensor under CUDA graphs
            state.scheduler.step()
            state.step_in_epoch += 1
            state.global_step += 1
            now = time.perf_counter()
            step_s, t_last = now - t_last, now
            stats = all_reduce_mean({"train/loss": loss_value, "perf/data_wait_s": wait_s}, env)
            record = {
                "epoch": state.epoch, "step": state.step_in_epoch, "global_step": state.global_step,
                "train/lr": lr, "train/grad_norm": float(grad_norm.item()), "perf/step_s": step_s,
                "perf/img_per_s": cfg.data.batch_size / step_s,
                "perf/data_wait_frac": min(1.0, stats["perf/data_wait_s"] / step_s), **stats,
            }  # fmt: skip
            ctx.writer.write(
                "train", record, to_tensorboard=state.global_step % cfg.run.log_every == 0
            )
            bar.update(1)
            if state.global_step % cfg.run.log_every == 0:
                bar.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{record['perf/img_per_s']:.0f}")  # fmt: skip
                if bar.disable and env.is_main:
                    log.info("epoch %d step %d/%d loss %.4f lr %.2e %.0f img/s wait %.0f%%",
                             state.epoch, state.step_in_epoch, n, record["train/loss"], lr,
                             record["perf/img_per_s"], 100 * record["perf/data_wait_frac"])  # fmt: skip
            if code == _SIGNAL:
                return False
            every = cfg.run.ckpt_every_steps
            if every and state.global_step % every == 0 and state.step_in_epoch < n:
                _save(state, ctx, "last.pt")
    finally:
        bar.close()
        del it  # shut loader workers down
    return True


def _end_epoch(state: TrainState, ctx: RunContext, epoch: int) -> None:
    """Validate (on cadence), update early stopping, advance the epoch, save best/last."""
    cfg = ctx.cfg
    names = ["last.pt"]
    is_last = epoch + 1 == cfg.run.epochs
    if (epoch + 1) % cfg.run.val_every == 0 or is_last:
        val_batches = start_batches(ctx.make_loader(ctx.val_reader))
        metrics = validate(state.raw_model, val_batches, ctx.env, loss_fn=ctx.loss_fn,
                           channels_last=ctx.channels_last)  # fmt: skip
        is_best = state.early.update(metrics, epoch)
        state.val_metrics = {**metrics, "epoch": epoch}
        ctx.writer.write("val", {"epoch": epoch, "global_step": state.global_step,
                                 "val/is_best": int(is_best), **metrics})  # fmt: skip
        if ctx.env.is_main:
            log.info("epoch %d val: %s=%.4f auroc=%.4f tpr@1e-3=%.4f fpr@0.9=%.4g n=%d%s",
                     epoch, state.early.monitor, metrics[state.early.monitor], metrics["val/auroc"],
                     metrics["val/tpr@fpr1e-3"], metrics["val/fpr@tpr0.9"],
                     int(metrics["val/num"]), " (best)" if is_best else "")  # fmt: skip
        if is_best:
            names.append("best.pt")
    state.epoch, state.step_in_epoch = epoch + 1, 0
    _save(state, ctx, *names)


def fit(state: TrainState, ctx: RunContext) -> FitResult:
    """Train from ``state`` until the last epoch, early stopping, or a stop signal.

    Returns:
        A ``FitResult`` saying why it ended; last.pt (and best.pt) are on disk.
    """
    while state.epoch < ctx.cfg.run.epochs:
        epoch = state.epoch
        if not train_one_epoch(state, ctx):
            _save(state, ctx, "last.pt")
            return FitResult("signal", epoch, state.global_step, state.early.best_epoch,
                             ctx.stop.signum)  # fmt: skip
        _end_epoch(state, ctx, epoch)
        if state.early.should_stop:
            return FitResult("early_stopped", epoch, state.global_step, state.early.best_epoch)
        if all_reduce_max(_SIGNAL if ctx.stop.signum else 0, ctx.env):
            return FitResult("signal", epoch, state.global_step, state.early.best_epoch,
                             ctx.stop.signum)  # fmt: skip
    return FitResult("completed", state.epoch - 1, state.global_step, state.early.best_epoch)
