"""The one training step and the one eval forward, run eagerly, compiled or from a CUDA graph.

``train_step`` is a whole optimiser step as a function of tensors: zero the gradients,
D4-augment on the device, forward under autocast, the fp32 loss per sample weighted by
``weight`` (``sum(w * l) / sum(w)``: zero-weight rows pad a static batch without changing
the gradient, as ConvNeXt normalises per sample), backward, the gradient all-reduce of a
graphed multi-rank run, global-norm clipping, the optimiser step, the update of the weights'
moving average (``train.ema``, with ``--ema-decay``), and the step's loss and gradient norm
written into device buffers (``StepMetrics``). It has no host syncs and no
branch on data, so every mode runs this same function:

- ``eager``: called as is (CPU runs, ``--no-cuda-graphs``, DDP-wrapped models);
- ``compile``: called on a ``torch.compile``d model;
- ``graph``: captured once in a CUDA graph (``cuda_graph.GraphedCall``) that reads static
  input buffers (``graph_io.StaticBatch``), then replayed.

``eval_logits`` is the forward of validation and inference (``haloscope.infer.steps``):
no grad, optional autocast, fp32 logits. ``EvalStep`` runs it in the same modes with a
fixed batch (a short batch is padded, its padded logits dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from haloscope.train.augment import D4_SIZE, d4_transform
from haloscope.train.cuda_graph import GraphedCall, make_capturable
from haloscope.train.ema import WeightEMA
from haloscope.train.graph_io import StaticBatch
from haloscope.train.loss import LossFn, build_loss

__all__ = [
    "StepMode",
    "GradSync",
    "StepOptions",
    "StepMetrics",
    "train_step",
    "eval_logits",
    "TrainStep",
    "EvalStep",
    "resolve_step_mode",
    "make_train_step",
    "make_eval_step",
]

log = logging.getLogger(__name__)

StepMode = Literal["auto", "graph", "compile", "eager"]
GradSync = Callable[[list[torch.Tensor]], None]
"""In-place averaging of the parameters' gradients over ranks (``dist.make_grad_sync``)."""
_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How ``train_step`` treats a batch."""

    augment: bool = True
    """A random D4 element (rot90 x flip) per sample, drawn on the device."""
    amp_dtype: torch.dtype | None = None
    """Autocast dtype of the forward (torch.bfloat16 on CUDA) or None for fp32."""
    channels_last: bool = True
    """Feed the model channels-last images."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""

    def __post_init__(self) -> None:
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")


class StepMetrics:
    """Per-step training numbers kept on the device until the loop reads them.

    ``train_step`` writes ``(loss, grad_norm)`` into row ``count % slots`` of ``values`` and
    increments the device counter ``count``, so no step waits for the GPU; the loop calls
    ``read`` at least every ``slots`` steps (one device sync per read).

    Args:
        slots: rows of the ring (the loop's read cadence).
        device: where the buffers live.
    """

    FIELDS = ("loss", "grad_norm")

    def __init__(self, slots: int, device: torch.device | str) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.values = torch.zeros(slots, len(self.FIELDS), dtype=torch.float32, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Write one step's values (device ops only: capturable)."""
        row = torch.remainder(self.count, self.slots).reshape(1)
        values = torch.stack([loss.float(), grad_norm.float()]).reshape(1, len(self.FIELDS))
        self.values.index_copy_(0, row, values)
        self.count.add_(1)

    def read(self, num_steps: int) -> torch.Tensor:
        """The rows of the last ``num_steps`` steps, (num_steps, 2) float32 on the CPU.

        Waits for those steps to finish (``read_async`` collected at once), and starts the
        next window at row 0.

        Raises:
            ValueError: more steps than the ring holds.
        """
        return self.read_async(num_steps)()

    def read_async(self, num_steps: int) -> Callable[[], torch.Tensor]:
        """Start reading the last ``num_steps`` rows without waiting; returns the function
        that waits for them and gives ``read``'s (num_steps, 2) CPU tensor.

        The rows are copied into pinned host memory in stream order (after the steps
        queued so far, before any queued later), and the next window starts at row 0, so the
        host can go on queueing steps and collect this window one window later: the GPU
        never runs dry at a read (``read`` waits until the queue is empty).

        Raises:
            ValueError: more steps than the ring holds.
        """
        if not 0 <= num_steps <= self.slots:
            raise ValueError(f"can read 0..{self.slots} steps, asked for {num_steps}")
        if self.values.device.type != "cuda":
            out = self.values[:num_steps].clone()
            self.count.zero_()
            return lambda: out
        host = torch.empty((num_steps, len(self.FIELDS)), dtype=torch.float32, pin_memory=True)
        host.copy_(self.values[:num_steps], non_blocking=True)
        self.count.zero_()
        done = torch.cuda.Event()
        done.record()

        def result() -> torch.Tensor:
            done.synchronize()
            return host

        return result

    def snapshot(self) -> Callable[[], None]:
        """A function that puts the buffers back to their values now (in place)."""
        values, count = self.values.clone(), self.count.clone()

        def restore() -> None:
            self.values.copy_(values)
            self.count.copy_(count)

        return restore


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    meta: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    options: StepOptions,
    aug_gen: torch.Generator | None = None,
    grad_sync: GradSync | None = None,
    metrics: StepMetrics | None = None,
    ema: WeightEMA | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on one device batch; returns ``(loss, grad_norm)`` 0-d fp32 tensors.

    Args:
        model: ``(images (B,3,H,W) fp32, meta (B,M)) -> logits (B,)``, in train mode.
        images: (B, 3, H, W) float16/float32 on the model's device.
        meta: (B, M) raw meta values.
        labels: (B,) 1 = lens, 0 = control.
        weight: (B,) per-sample loss weight (0 for padding rows).
        optimizer: over the model's parameters.
        loss_fn: ``build_loss``'s function (called with ``reduction="none"``).
        options: augmentation, autocast, memory format, clipping.
        aug_gen: generator of the D4 draws (None: the device's default one).
        grad_sync: gradient averaging over ranks for an unwrapped model, or None.
        metrics: device buffers that receive ``(loss, grad_norm)``, or None.
        ema: the moving average of the weights to update after the optimiser step, or None.
    """
    optimizer.zero_grad(set_to_none=True)
    x = images.float()
    if options.augment:  # one D4 element per sample; shapes never depend on the draw
        k = torch.randint(0, D4_SIZE, (x.shape[0],), device=x.device, generator=aug_gen)
        x = d4_transform(x, k)
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = options.amp_dtype
    with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(x, meta.float())
    per_sample = loss_fn(logits.float().reshape(-1), labels.float(), reduction="none")
    loss = (per_sample * weight).sum() / weight.sum().clamp_min(_TINY)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_sync is not None:
        grad_sync(params)
    max_norm = options.max_grad_norm if options.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    if ema is not None:
        ema.update()
    loss, grad_norm = loss.detach(), grad_norm.detach()
    if metrics is not None:
        metrics.record(loss, grad_norm)
    return loss, grad_norm


@torch.no_grad()
def eval_logits(
    model: nn.Module,
    images: torch.Tensor,
    meta: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """fp32 logits (B,) of a device batch (the model should be in eval mode)."""
    x = images.float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(
        x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    ):
        logits = model(x, meta)
    return logits.float().reshape(-1)


def _to(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device, non_blocking=True) for t in tensors]


class TrainStep:
    """``train_step`` bound to a model and an optimiser, run in one mode.

    Args:
        model: the model the step calls (DDP-wrapped for eager DDP; unwrapped for a graph).
        loss_fn: ``build_loss``'s function; None: the default ``LossConfig``'s.
        optimizer: over the model's parameters (switched to capturable for a graph).
        device: where the model lives.
        mode: ``eager``, ``compile`` or ``graph`` (resolved, see ``resolve_step_mode``).
        batch_size: the graph's static batch (graph mode; shorter batches are padded).
        options: see ``StepOptions``.
        aug_generator: generator of the D4 draws (the trainer's per-rank one).
        grad_sync: gradient averaging over ranks for an unwrapped model (graph under torchrun).
        metrics_slots: steps the device metrics ring holds between reads.
        ema: the moving average of the weights, updated after every optimiser step, or None.

    Raises:
        ValueError: graph mode off CUDA, a bad batch size, or a non-capturable optimiser.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device | str,
        mode: str = "eager",
        batch_size: int = 0,
        options: StepOptions | None = None,
        aug_generator: torch.Generator | None = None,
        grad_sync: GradSync | None = None,
        metrics_slots: int = 50,
        ema: WeightEMA | None = None,
    ) -> None:
        self.device, self.mode = torch.device(device), mode
        if mode not in ("eager", "compile", "graph"):
            raise ValueError(f"unknown step mode {mode!r}: use eager, compile or graph")
        if mode == "graph" and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode == "compile":
            model = torch.compile(model, dynamic=False)  # type: ignore[assignment]
        self.model, self.optimizer = model, optimizer
        self.loss_fn = loss_fn if loss_fn is not None else build_loss()
        self.options = options if options is not None else StepOptions()
        self.aug_generator, self.grad_sync, self.ema = aug_generator, grad_sync, ema
        self.metrics = StepMetrics(metrics_slots, self.device)
        self.batch_size, self.num_padded_samples = batch_size, 0
        self._batch: StaticBatch | None = None
        self._graph: GraphedCall | None = None
        if mode == "graph":
            if self.device.type != "cuda":
                raise ValueError(f"a graphed step needs a CUDA device, got {self.device}")
            make_capturable(optimizer, self.device)

    def _call(
        self, images: torch.Tensor, meta: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # NOTE: the module global is looked up per call, so tests can wrap train_step
        return train_step(
            self.model,
            images,
            meta,
            labels,
            weight,
            optimizer=self.optimizer,
            loss_fn=self.loss_fn,
            options=self.options,
            aug_gen=self.aug_generator,
            grad_sync=self.grad_sync,
            metrics=self.metrics,
            ema=self.ema,
        )

    def step(
        self,
        images: torch.Tensor,
        meta: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run one training step on a (pinned host or device) batch.

        Args:
            images: (B, 3, H, W) float16/float32.
            meta: (B, M) float32 raw meta values (M may be 0).
            labels: (B,) 1 = lens, 0 = control.
            weight: (B,) per-sample loss weight; None: all ones.

        Returns:
            ``{"loss": (), "grad_norm": ()}`` fp32 device tensors (no host sync).
        """
        if self.mode == "graph":
            return self._graph_step(images, meta, labels, weight)
        self.model.train()
        images, meta, labels = _to(self.device, images, meta, labels)
        weight = torch.ones_like(labels, dtype=torch.float32) if weight is None else weight
        loss, norm = self._call(images, meta, labels, weight.to(self.device).float())
        return {"loss": loss, "grad_norm": norm}

    def _undo_warmup(self) -> Callable[[], None]:
        """Snapshot weights, optimiser state, metrics and the weights' moving average; the
        returned function restores them."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        weights = [p.detach().clone() for p in params]
        saved = {
            p: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
            for p, s in self.optimizer.state.items()
        }
        restore_metrics = self.metrics.snapshot()
        restore_ema = self.ema.snapshot() if self.ema is not None else None

        @torch.no_grad()
        def restore() -> None:  # in place: the graph keeps these addresses
            for p, value in zip(params, weights, strict=True):
                p.copy_(value)
            for p, state in self.optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        value.copy_(saved[p][key]) if p in saved else value.zero_()
            restore_metrics()
            if restore_ema is not None:
                restore_ema()

        return restore

    def prepare(self, images: torch.Tensor, meta: torch.Tensor) -> None:
        """Capture the graph now (graph mode; eager and compile: nothing), from a batch of
        zeros shaped like ``images`` (n,3,H,W) and ``meta`` (n,M) row for row, so that the
        first step replays it. The capture's warm-up steps are undone (``_undo_warmup``)."""
        if self.mode != "graph" or self._graph is not None:
            return
        self.model.train()
        rows = (self.batch_size,)
        self._build_graph(images, meta)
        assert self._batch is not None and self._graph is not None
        zeros = torch.zeros(rows, device=self.device)
        self._batch.load(
            images.new_zeros(rows + images.shape[1:], device=self.device),
            meta.new_zeros(rows + meta.shape[1:], device=self.device),
            zeros,
            torch.ones_like(zeros),
        )
        self._graph.capture()

    def _build_graph(self, images: torch.Tensor, meta: torch.Tensor) -> None:
        """The static batch (shaped like ``images``, ``meta``) and the (uncaptured) graph."""
        self._batch = StaticBatch.for_batch(
            self.batch_size, images, meta, self.device, with_labels=True
        )
        s = self._batch.static
        aug = self.aug_generator if self.options.augment else None
        gens = [aug] if aug is not None else []  # the default CUDA generator always is
        self._graph = GraphedCall(
            lambda: self._call(s["images"], s["meta"], s["labels"], s["weight"]),
            self.device,
            generators=gens,
            undo_warmup=self._undo_warmup,
            name=f"training step (batch {self.batch_size})",
        )

    def _graph_step(
        self,
        images: torch.Tensor,
        meta: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        if self._batch is None:
            self.model.train()
            self._build_graph(images, meta)
        assert self._batch is not None
        n = self._batch.load(images, meta, labels, weight)
        if n < self.batch_size:
            self.num_padded_samples += self.batch_size - n
            log.info("padded a batch of %d with %d zero-weight samples", n, self.batch_size - n)
        assert self._graph is not None
        loss, norm = self._graph()
        return {"loss": loss.clone(), "grad_norm": norm.clone()}


class EvalStep:
    """``eval_logits`` in one mode: a batch of n <= ``batch_size`` rows -> (n,) fp32 logits.

    The model is put in eval mode for the call and back in its former mode after it.

    Args:
        model: the unwrapped model.
        device: where the model lives.
        batch_size: the graph's static batch (graph mode: shorter batches are padded).
        mode: ``eager``, ``compile`` or ``graph``.
        amp_dtype: autocast dtype or None for fp32.
        channels_last: feed the model channels-last images.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str,
        batch_size: int,
        mode: str = "eager",
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in ("eager", "compile", "graph"):
            raise ValueError(f"unknown step mode {mode!r}: use eager, compile or graph")
        self.module, self.device = model, torch.device(device)
        self.batch_size, self.mode = batch_size, mode
        self.model = torch.compile(model, dynamic=False) if mode == "compile" else model
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self._batch: StaticBatch | None = None
        self._graph: GraphedCall | None = None
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError(f"a graphed step needs a CUDA device, got {self.device}")

    def _forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return eval_logits(
            self.model, images, meta, amp_dtype=self.amp_dtype, channels_last=self.channels_last
        )

    def prepare(self, images: torch.Tensor, meta: torch.Tensor) -> None:
        """Capture the graph now (graph mode; eager and compile: nothing), from a batch of
        zeros shaped like ``images`` and ``meta`` row for row, so the first call replays it."""
        if self.mode != "graph" or self._graph is not None:
            return
        self._build_graph(images, meta)  # its static buffers start as zeros
        assert self._graph is not None
        was_training = self.module.training
        self.module.eval()
        try:
            self._graph.capture()
        finally:
            self.module.train(was_training)

    def _build_graph(self, images: torch.Tensor, meta: torch.Tensor) -> None:
        self._batch = StaticBatch.for_batch(
            self.batch_size, images, meta, self.device, with_labels=False
        )
        s = self._batch.static
        self._graph = GraphedCall(
            lambda: self._forward(s["images"], s["meta"]),
            self.device,
            name=f"eval step (batch {self.batch_size})",
        )

    def _graphed(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        if self._batch is None:
            self._build_graph(images, meta)
        assert self._batch is not None
        n = self._batch.load(images, meta)
        assert self._graph is not None
        return self._graph()[:n].clone()

    def logits(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """fp32 logits (n,) on the device of images (n,3,H,W) and meta (n,M), host or device.

        Raises:
            ValueError: graph mode and more than ``batch_size`` rows.
        """
        was_training = self.module.training
        self.module.eval()
        try:
            if self.mode == "graph":
                return self._graphed(images, meta)
            return self._forward(*_to(self.device, images, meta))
        finally:
            self.module.train(was_training)


def resolve_step_mode(
    mode: StepMode,
    device: torch.device | str,
    *,
    distributed: bool = False,
    grad_sync: bool = False,
) -> str:
    """Pick the concrete step kind: ``auto`` is graph on CUDA, else eager.

    Several ranks can run the graphed step only with a ``grad_sync`` (the gradient
    all-reduce captured inside the graph); without one, ``auto`` falls back to eager (DDP).

    Raises:
        ValueError: ``graph`` asked for on a non-CUDA device or on several ranks without a
            gradient sync, or an unknown mode.
    """
    device = torch.device(device)
    if mode not in ("auto", "graph", "compile", "eager"):
        raise ValueError(f"unknown step mode {mode!r}: use auto, graph, compile or eager")
    graph_ok = device.type == "cuda" and (grad_sync or not distributed)
    if mode == "graph" and not graph_ok:
        raise ValueError(
            f"a graphed step needs CUDA and, on several ranks, a gradient sync; "
            f"got {device}, ddp={distributed}, grad_sync={grad_sync}"
        )
    if mode == "auto":
        return "graph" if graph_ok else "eager"
    return mode


def _amp(device: torch.device, bf16: bool | None) -> torch.dtype | None:
    return torch.bfloat16 if (device.type == "cuda" if bf16 is None else bf16) else None


def make_train_step(
    model: nn.Module,
    loss_fn: LossFn | None,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    *,
    device: torch.device | str,
    mode: StepMode = "auto",
    distributed: bool = False,
    augment: bool = True,
    aug_generator: torch.Generator | None = None,
    bf16: bool | None = None,
    channels_last: bool = True,
    max_grad_norm: float = 1.0,
    grad_sync: GradSync | None = None,
    metrics_slots: int = 50,
    ema: WeightEMA | None = None,
) -> TrainStep:
    """Build the training step: ``graph``, ``compile`` (torch.compile default mode) or ``eager``.

    Args:
        bf16: bf16 autocast; None: on for CUDA, off (fp32) elsewhere.
        grad_sync: on several ranks with an unwrapped model, the gradient averaging
            (``dist.make_grad_sync``); it is what lets ``graph`` run under torchrun.
        Others: as for ``TrainStep``, ``StepOptions`` and ``resolve_step_mode``.
    """
    device = torch.device(device)
    kind = resolve_step_mode(mode, device, distributed=distributed, grad_sync=grad_sync is not None)
    options = StepOptions(
        augment=augment,
        amp_dtype=_amp(device, bf16),
        channels_last=channels_last,
        max_grad_norm=max_grad_norm,
    )
    log.info("training step: %s (asked %s) on %s", kind, mode, device)
    return TrainStep(
        model,
        loss_fn,
        optimizer,
        device=device,
        mode=kind,
        batch_size=batch_size,
        options=options,
        aug_generator=aug_generator,
        grad_sync=grad_sync,
        metrics_slots=metrics_slots,
        ema=ema,
    )


def make_eval_step(
    model: nn.Module,
    *,
    device: torch.device | str,
    batch_size: int,
    mode: StepMode = "auto",
    bf16: bool | None = None,
    channels_last: bool = True,
) -> EvalStep:
    """Build the eval step; modes as for ``make_train_step`` (no collectives: per rank)."""
    device = torch.device(device)
    kind = resolve_step_mode(mode, device)
    return EvalStep(
        model,
        device=device,
        batch_size=batch_size,
        mode=kind,
        amp_dtype=_amp(device, bf16),
        channels_last=channels_last,
    )
