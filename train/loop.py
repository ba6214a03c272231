"""The training loop: one loop that owns cadence around the one step (``train/step.py``).

Every step, in every mode (eager on CPU or GPU, torch.compile, CUDA graph), is
``ctx.step.step(image, meta, label)``: a ``train.step.TrainStep`` running ``train_step``,
which leaves the loss and gradient norm in device buffers. The loop never waits for the
GPU between reads: every ``--sync-every`` steps, at the end of an epoch and before a
checkpoint it reads those buffers once (``_read``), writes the per-step records, checks
that the losses are finite and, under torchrun, agrees with the other ranks on a stop
request. One process stops at the step a signal arrives in.

One train loader serves the whole run (``ShardReader.span_epochs``: each epoch in its
(seed, epoch) order, from a mid-epoch resume position too) and one val loader every
validation, so no epoch boundary restarts worker processes. Validation runs the trainer's
eval step (``train.step.EvalStep``: a CUDA graph of fixed batch shape on CUDA, eager on
CPU). Checkpoints are snapshotted on the device by the main thread, then copied to the host
and written by a background thread (``checkpoint.CheckpointWriter``). The time from the
first step to the last checkpoint is split into step, loader wait, validation, checkpoint
and other (``metrics.TimeBreakdown``) and returned in ``FitResult.timing``.
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
from haloscope.shards.read import ShardReader
from haloscope.train import checkpoint as ckpt
from haloscope.train.config import TrainConfig
from haloscope.train.dist import DistEnv, all_gather_object, all_reduce_mean
from haloscope.train.ema import WeightEMA
from haloscope.train.failures import worker_batches
from haloscope.train.loss import LossFn
from haloscope.train.metrics import MetricsWriter, StepWindow, TimeBreakdown
from haloscope.train.step import EvalStep, TrainStep
from haloscope.train.validate import EarlyStopping, validate

__all__ = [
    "TrainState",
    "RunContext",
    "PendingRead",
    "StopFlag",
    "FitResult",
    "catch_signals",
    "start_batches",
    "checkpoint_payload",
    "fit",
]

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything that changes during training (and goes into last.pt)."""

    model: torch.nn.Module  # what the step calls: DDP and/or compiled wrapper
    raw_model: torch.nn.Module  # the plain LensFinder (state_dict, validation)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    aug_gen: torch.Generator | None
    early: EarlyStopping
    ema: WeightEMA | None = None  # the weights' moving average (--ema-decay), or None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    val_metrics: dict[str, float] = field(default_factory=dict)
    loader_state: dict[str, Any] | None = None  # reader position to restore (resume only)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model validation scores: the weights' moving average when there is one."""
        return self.ema.module if self.ema is not None else self.raw_model


@dataclass(kw_only=True)
class RunContext:
    """What one run works with: settings, readers, step functions (fixed once built), and
    the bookkeeping objects of the loop (the last five fields, which the loop updates)."""

    cfg: TrainConfig
    env: DistEnv
    run_dir: Path
    train_reader: ShardReader
    val_reader: ShardReader
    make_loader: Callable[[ShardReader], Iterable[dict[str, Any]]]
    loss_fn: LossFn
    writer: MetricsWriter
    static: dict[str, Any]  # model_args, config JSON, preprocess, meta (checkpoint constants)
    steps_per_epoch: int
    amp_dtype: torch.dtype | None
    channels_last: bool
    stop: StopFlag
    step: TrainStep  # the run's training step (eager, compile or graph)
    eval_step: EvalStep  # validation's step (a CUDA graph on CUDA, eager elsewhere)
    # bookkeeping, updated by the loop:
    saver: ckpt.CheckpointWriter = field(default_factory=ckpt.CheckpointWriter)
    timer: TimeBreakdown = field(default_factory=TimeBreakdown)
    window: StepWindow | None = None  # steps whose device metrics are not read yet
    pending: PendingRead | None = None  # a window whose metrics are on their way to the host
    val_batches: Iterator[dict[str, Any]] | None = None  # every validation's, one loader


@dataclass
class PendingRead:
    """A window taken from ``RunContext.window`` whose device metrics are being copied."""

    rows: list[dict[str, Any]]
    wall_s: float
    values: Callable[[], torch.Tensor]  # waits for the copy (``StepMetrics.read_async``)


# the signals that stop a run after saving last.pt: SIGUSR1 is what Slurm's
# `--signal=B:USR1@180` sends before the time limit (slurm/train.sbatch forwards it)
STOP_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []),
)


class StopFlag:
    """Set by SIGTERM/SIGINT/SIGUSR1; the loop saves last.pt and returns (see the module doc)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum


@contextmanager
def catch_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route ``STOP_SIGNALS`` to ``flag`` inside the block, restoring handlers after."""
    old = {s: signal.signal(s, flag) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class FitResult:
    """How training ended (``completed``, ``early_stopped`` or ``signal``) and its timing."""

    reason: str
    epoch: int
    global_step: int
    best_epoch: int
    signum: int | None = None
    timing: dict[str, float] = field(default_factory=dict)


def checkpoint_payload(state: TrainState, ctx: RunContext) -> dict[str, Any]:
    """The full resume + inference payload of the current state (tensors not yet copied);
    with ``--ema-decay`` the averaged weights go in ``ema_model``, beside ``model``."""
    reader = {
        **ctx.train_reader.state_dict(),
        "epoch": state.epoch,
        "batches_consumed": state.step_in_epoch,
    }
    return {
        "model": state.raw_model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "progress": {
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "world_size": ctx.env.world_size,
        },
        "loader": {"epoch": state.epoch, "batches_done": state.step_in_epoch, "reader": reader},
        "rng": ckpt.capture_rng(state.aug_gen),
        "early_stopping": state.early.state_dict(),
        "val_metrics": dict(state.val_metrics),
        **({"ema_model": state.ema.module.state_dict()} if state.ema is not None else {}),
        **ctx.static,
    }


def _save(state: TrainState, ctx: RunContext, *names: str) -> None:
    """Queue last.pt/best.pt of the current state; the unread steps are checked first."""
    _read(state, ctx)  # NOTE: a non-finite loss raises here, before anything is saved
    with ctx.timer.phase("checkpoint", "wait_previous"):
        ctx.saver.join()  # the previous write (done long ago, unless the disk is slow)
    with ctx.timer.phase("checkpoint", "snapshot"):
        # every rank's RNG streams (dropout, drop-path, D4), so each rank resumes its own
        rng_per_rank = all_gather_object(ckpt.capture_rng(state.aug_gen), ctx.env)
        if ctx.env.is_main:
            paths = [ctx.run_dir / name for name in names]
            payload = lambda: {**checkpoint_payload(state, ctx), "rng_per_rank": rng_per_rank}  # noqa: E731
            ctx.saver.save(paths, payload, ctx.env.device)


def start_batches(batches: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Start a loader (forking its workers, which begin reading at once) RNG-neutrally and
    shielded from stop signals; returns without waiting for the first batch.

    The DataLoader draws its worker base seed from the global torch RNG when its iterator
    starts (``ShardLoader.__iter__``); that draw is undone so dropout and stochastic depth
    see the same stream in a resumed run. The stop signals are blocked while the workers
    fork, so the workers inherit the block and never die of a signal sent to the whole
    process group (a terminal's Ctrl-C, ``kill -- -PGID``): only the main process handles
    it. A worker's error is re-raised with its own message once the workers are shut down
    (``failures.worker_batches``: blocking SIGTERM, they would otherwise outlive the run).
    """
    rng = torch.get_rng_state()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        return worker_batches(iter(batches))  # iter() forks the workers, inside the block
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        torch.set_rng_state(rng)


def _train_batches(state: TrainState, ctx: RunContext) -> Iterator[dict[str, Any]]:
    """One loader over the train batches of the rest of the run, from the current position."""
    reader = ctx.train_reader
    reader.set_epoch(state.epoch)
    saved = (state.loader_state or {}).get("reader", {})  # checks seed, batch size, ...
    reader.load_state_dict(
        {
            **reader.state_dict(),
            **saved,
            "epoch": state.epoch,
            "batches_consumed": state.step_in_epoch,
        }
    )
    state.loader_state = None
    reader.span_epochs(ctx.cfg.run.epochs - state.epoch, ctx.steps_per_epoch)
    return start_batches(ctx.make_loader(reader))


def _prepare_steps(ctx: RunContext, validating: bool) -> None:
    """Capture the graphed steps (train, and validation's when one is due) from zero batches
    of the readers' shapes while the loaders' workers read their first batches; eager and
    compiled steps have nothing to prepare."""
    template = ctx.train_reader.zeros_batch()
    with ctx.timer.setup_phase("capture"):
        ctx.step.prepare(template["image"], template["meta"])
    if validating:
        with ctx.timer.setup_phase("eval_capture"):
            ctx.eval_step.prepare(template["image"], template["meta"])


def _validations_left(epoch: int, ctx: RunContext) -> int:
    run = ctx.cfg.run
    return sum(
        (e + 1) % run.val_every == 0 or e + 1 == run.epochs for e in range(epoch, run.epochs)
    )


def _start_val(state: TrainState, ctx: RunContext) -> Iterator[dict[str, Any]]:
    """The one val loader of the run's remaining validations, started on first use."""
    if ctx.val_batches is None:
        ctx.val_reader.set_epoch(0)
        ctx.val_reader.span_epochs(_validations_left(state.epoch, ctx))
        ctx.val_batches = start_batches(ctx.make_loader(ctx.val_reader))
    return ctx.val_batches


def _val_batches(state: TrainState, ctx: RunContext) -> Iterator[dict[str, Any]]:
    """This validation's batches (the whole val split of this rank), from the one val loader."""
    return itertools.islice(_start_val(state, ctx), ctx.val_reader.batches_per_rank())


def _current_lr(scheduler: torch.optim.lr_scheduler.LRScheduler) -> float:
    """The learning rate of the next step, on the host (a graphed step's lr is a device
    tensor, and reading it would wait for the GPU)."""
    lr = scheduler.optimizer.param_groups[0]["lr"]
    if not isinstance(lr, torch.Tensor):
        return float(lr)
    lam = scheduler.lr_lambdas[0]  # type: ignore[attr-defined]  # LambdaLR (train.optim)
    return float(scheduler.base_lrs[0]) * lam(scheduler.last_epoch)


def _read(state: TrainState, ctx: RunContext, *, lagged: bool = False) -> bool:
    """Read the unread steps' device metrics and write their records.

    ``lagged`` (the ``--sync-every`` cadence): start copying this window's metrics and
    finish the previous window's read, whose steps ran while later ones were queued, so the
    GPU keeps working while the host writes records. Otherwise (epoch end, checkpoint, stop)
    every unread step is read, waiting for the GPU (one sync).

    Returns:
        True when a stop signal arrived (under torchrun: on any rank; all ranks agree).

    Raises:
        DataError: a non-finite loss; it names the first such step.
    """
    window, env = ctx.window, ctx.env
    taken = None
    if window is not None and len(window):
        rows, wall_s = window.take()
        taken = PendingRead(rows, wall_s, ctx.step.metrics.read_async(len(rows)))
    if lagged:
        previous, ctx.pending = ctx.pending, taken
        done = [previous] if previous is not None else []
    else:
        done = [r for r in (ctx.pending, taken) if r is not None]
        ctx.pending = None
    if not done:
        return ctx.stop.signum is not None and not env.is_distributed
    stop = False
    for read in done:
        stop = _write_read(read, ctx) or stop
    return stop


def _write_read(read: PendingRead, ctx: RunContext) -> bool:
    """Wait for one window's metrics, check them, write its records; True on a stop."""
    with ctx.timer.phase("step"):  # where the host waits for the GPU
        values = read.values()
    window, env = ctx.window, ctx.env
    assert window is not None
    local = {f"{i:06d}": float(v) for i, v in enumerate(values[:, 0].tolist())}
    waits = [r["perf/data_wait_s"] for r in read.rows]
    local.update({f"w{i:06d}": w for i, w in enumerate(waits)})
    local["stop"] = float(ctx.stop.signum is not None)
    mean = all_reduce_mean(local, env)  # one collective per read (none on one process)
    losses = [mean[f"{i:06d}"] for i in range(len(read.rows))]
    for row, w in zip(read.rows, range(len(read.rows)), strict=True):
        row["perf/data_wait_s"] = mean[f"w{w:06d}"]
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        row = read.rows[bad]
        raise DataError(
            f"non-finite training loss at epoch {row['epoch']}, step {row['step'] - 1} of the "
            f"epoch (batch {row['step'] - 1} of this rank's epoch order, global step "
            f"{row['global_step'] - 1}); stopped without saving: last.pt and best.pt keep the "
            "last good state. Check the shards or lower --lr."
        )
    pairs = list(zip(losses, values[:, 1].tolist(), strict=True))
    _log_records(window.records(pairs, wall_s=read.wall_s, rows=read.rows), ctx)
    return mean["stop"] > 0


def _log_records(records: list[dict[str, Any]], ctx: RunContext) -> None:
    cfg, env = ctx.cfg, ctx.env
    for record in records:
        due = record["global_step"] % cfg.run.log_every == 0
        ctx.writer.write("train", record, to_tensorboard=due)
        if due and env.is_main and not cfg.run.progress:
            log.info(
                "epoch %d step %d/%d loss %.4f lr %.2e %.0f img/s wait %.0f%%",
                record["epoch"],
                record["step"],
                ctx.steps_per_epoch,
                record["train/loss"],
                record["train/lr"],
                record["perf/img_per_s"],
                100 * record["perf/data_wait_frac"],
            )


def _next_batch(
    batches: Iterator[dict[str, Any]], state: TrainState, ctx: RunContext
) -> tuple[dict[str, Any], float] | None:
    """The next train batch and its wait (booked as loader wait); None when a stop signal
    hit the loader."""
    with ctx.timer.phase("loader_wait"):
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            raise DataError(
                f"the train loader ended after {state.step_in_epoch} of {ctx.steps_per_epoch} "
                f"batches in epoch {state.epoch}; check the shards"
            ) from None
        except Exception:
            if ctx.stop.signum is not None:  # Ctrl-C also reached the loader workers
                return None
            raise
    return batch, time.perf_counter() - t0


def _run_step(batch: dict[str, Any], wait_s: float, state: TrainState, ctx: RunContext) -> None:
    """Dispatch one step (no wait for the GPU) and note it in the window."""
    with ctx.timer.phase("step"):
        lr = _current_lr(state.scheduler)
        ctx.step.step(batch["image"], batch["meta"], batch["label"])
        state.scheduler.step()
    state.step_in_epoch += 1
    state.global_step += 1
    ctx.timer.num_steps += 1
    assert ctx.window is not None
    ctx.window.add(
        epoch=state.epoch,
        step=state.step_in_epoch,
        global_step=state.global_step,
        lr=lr,
        wait_s=wait_s,
    )


def train_one_epoch(state: TrainState, ctx: RunContext, batches: Iterator[dict[str, Any]]) -> bool:
    """Run the rest of the current epoch; returns False when a stop signal arrived.

    Raises:
        DataError: the loss became non-finite (nothing is saved after that step).
    """
    cfg, env = ctx.cfg, ctx.env
    n = ctx.steps_per_epoch
    if state.step_in_epoch >= n:
        return True
    bar = tqdm(
        total=n,
        initial=state.step_in_epoch,
        desc=f"epoch {state.epoch}",
        disable=not (env.is_main and cfg.run.progress),
        dynamic_ncols=True,
    )
    try:
        while state.step_in_epoch < n:
            got = _next_batch(batches, state, ctx)
            if got is None:
                _read(state, ctx)
                return False
            _run_step(*got, state, ctx)
            bar.update(1)
            every = cfg.run.ckpt_every_steps
            ckpt_due = bool(every) and state.global_step % every == 0 and state.step_in_epoch < n
            must_read = (
                state.step_in_epoch == n
                or ckpt_due
                or (ctx.stop.signum is not None and not env.is_distributed)
            )
            read_due = must_read or len(ctx.window or ()) >= cfg.run.sync_every
            if read_due and _read(state, ctx, lagged=not must_read):
                return False
            if read_due and ctx.window is not None and ctx.window.last is not None:
                last = ctx.window.last
                bar.set_postfix(
                    loss=f"{last['train/loss']:.4f}",
                    lr=f"{last['train/lr']:.2e}",
                    img_s=f"{last['perf/img_per_s']:.0f}",
                )
            if ckpt_due:
                _save(state, ctx, "last.pt")
    finally:
        bar.close()
    return True


def _end_epoch(state: TrainState, ctx: RunContext, epoch: int) -> None:
    """Validate (on cadence), update early stopping, advance the epoch, save best/last."""
    cfg = ctx.cfg
    names = ["last.pt"]
    is_last = epoch + 1 == cfg.run.epochs
    validated = (epoch + 1) % cfg.run.val_every == 0 or is_last
    if validated:
        _wait_curves(ctx)  # the last validation's redraw, done during this epoch
        with ctx.timer.phase("validation"):
            metrics = validate(
                state.eval_model,
                _val_batches(state, ctx),
                ctx.env,
                loss_fn=ctx.loss_fn,
                channels_last=ctx.channels_last,
                step=ctx.eval_step,
            )
        is_best = state.early.update(metrics, epoch)
        state.val_metrics = {**metrics, "epoch": epoch}
        ctx.writer.write(
            "val",
            {
                "epoch": epoch,
                "global_step": state.global_step,
                "val/is_best": int(is_best),
                **metrics,
            },
            redraw=False,  # after the checkpoint's snapshot (below): matplotlib holds the GIL
        )
        if ctx.env.is_main:
            det = metrics.get("val/det_tpr@fpr1e-3", math.nan)
            log.info(
                "epoch %d val: %s=%.4f auroc=%.4f tpr@1e-3=%.4f detectable tpr@1e-3=%.4f "
                "fpr@0.9=%.4g n=%d%s",
                epoch,
                state.early.monitor,
                metrics.get(state.early.monitor, math.nan),
                metrics["val/auroc"],
                metrics["val/tpr@fpr1e-3"],
                det,
                metrics["val/fpr@tpr0.9"],
                int(metrics["val/num"]),
                " (best)" if is_best else "",
            )
        if is_best:
            names.append("best.pt")
    state.epoch, state.step_in_epoch = epoch + 1, 0
    _save(state, ctx, *names)
    if validated:
        ctx.writer.redraw_curves()  # overlaps the next epoch's steps


def _wait_curves(ctx: RunContext) -> None:
    """Wait for the curves redraw in flight; a failed one is a warning: the picture is not
    worth the run (a full disk stops the run at its next checkpoint, naming the file)."""
    try:
        ctx.writer.wait_curves()
    except OSError as exc:
        log.warning("%s; training goes on", exc)


def _epochs(state: TrainState, ctx: RunContext, batches: Iterator[dict[str, Any]]) -> FitResult:
    """The epochs of ``fit``; the result's timing is filled in by ``fit``."""
    while state.epoch < ctx.cfg.run.epochs:
        epoch = state.epoch
        if not train_one_epoch(state, ctx, batches):
            _save(state, ctx, "last.pt")
            return FitResult(
                "signal", epoch, state.global_step, state.early.best_epoch, ctx.stop.signum
            )
        _end_epoch(state, ctx, epoch)
        if state.early.should_stop:
            return FitResult("early_stopped", epoch, state.global_step, state.early.best_epoch)
        if _read_stop(ctx):
            return FitResult(
                "signal", epoch, state.global_step, state.early.best_epoch, ctx.stop.signum
            )
    return FitResult("completed", state.epoch - 1, state.global_step, state.early.best_epoch)


def _read_stop(ctx: RunContext) -> bool:
    """Whether any rank got a stop signal (a collective under torchrun)."""
    return all_reduce_mean({"stop": float(ctx.stop.signum is not None)}, ctx.env)["stop"] > 0


def fit(state: TrainState, ctx: RunContext) -> FitResult:
    """Train from ``state`` until the last epoch, early stopping, or a stop signal.

    Returns:
        A ``FitResult`` saying why it ended, with the run's time breakdown; last.pt (and
        best.pt) are on disk.

    Raises:
        DataError: a non-finite loss or a damaged shard.
        OSError: a checkpoint could not be written (naming the file).
    """
    ctx.window = StepWindow(ctx.cfg.data.batch_size)
    batches: Iterator[dict[str, Any]] = iter(())
    try:
        if state.epoch < ctx.cfg.run.epochs:
            validating = _validations_left(state.epoch, ctx) > 0
            with ctx.timer.setup_phase("loader_start"):  # fork only: the workers read on
                batches = _train_batches(state, ctx)
                if validating:
                    _start_val(state, ctx)  # its first batches wait for the first validation
            _prepare_steps(ctx, validating)  # the captures overlap the workers' first reads
        ctx.timer.start()  # the first step
        result = _epochs(state, ctx, batches)
        with ctx.timer.phase("checkpoint", "last_write"):
            ctx.saver.join()  # the last checkpoint is on disk: the run's clock stops here
    except BaseException:
        ctx.saver.close(raising=False)
        raise
    finally:  # shut the loader workers down
        for it in (batches, ctx.val_batches):
            if hasattr(it, "close"):
                it.close()  # type: ignore[union-attr]
        ctx.val_batches = None
    timing = ctx.timer.summary(ctx.cfg.data.batch_size)
    _wait_curves(ctx)  # NOTE: after the clock: the redraw overlaps the last checkpoint
    return FitResult(
        result.reason, result.epoch, result.global_step, result.best_epoch, result.signum, timing
    )
