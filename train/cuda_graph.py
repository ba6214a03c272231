"""Training and inference steps without per-kernel launch cost: one CUDA graph per step.

At 64x64 a ConvNeXt-Tiny step is launch-bound (issue 9): cudnn runs each bf16 NHWC depthwise
7x7 convolution as ~105 tiny kernels, so the eager step spends more time launching than
computing. ``GraphedTrainStep`` captures the whole step (D4 augmentation, bf16 autocast
forward with stochastic depth, fp32 focal loss, backward, grad-norm clipping and the
capturable AdamW update) in one ``torch.cuda.CUDAGraph`` and replays it.

Static shapes: the graph always runs ``batch_size`` samples. A shorter (last) batch is
*padded* with zero-weight samples: the loss is ``sum(w * l) / sum(w)``, ConvNeXt has only
per-sample LayerNorm and per-sample stochastic depth, so padding gives exactly the gradient
of the valid samples. Inference pads the same way and drops the padded logits.

Data path (``graph_io.StaticBatch``): pinned host batch -> staging buffer on a side stream
(overlapping the previous replay) -> static buffers on the main stream -> replay.
Randomness (the D4 transform per sample, stochastic depth) comes from the default CUDA
generator, which graph capture registers: every replay draws fresh numbers.

Rules for callers: an Adam/AdamW optimiser (``fused=True`` when available; it is switched
to ``capturable=True`` with a tensor lr if built otherwise); load checkpoints *before* the
first graphed step (the graph holds the
addresses of the optimiser state); change the learning rate only by writing the tensor
``param_group["lr"]`` in place (``set_lr`` or any torch ``LRScheduler``, which fills tensor
lrs in place). ``EagerTrainStep``/``EagerPredictStep`` have the same interface and are what
CPU runs and what ``--no-cuda-graphs`` selects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from haloscope.train.augment import D4_SIZE, d4_transform
from haloscope.train.graph_io import StaticBatch, default_loss_fn, per_sample_loss

__all__ = [
    "StepMode",
    "GradSync",
    "EagerTrainStep",
    "GraphedTrainStep",
    "EagerPredictStep",
    "GraphedPredictStep",
    "make_train_step",
    "make_predict_step",
    "resolve_step_mode",
    "set_lr",
]

log = logging.getLogger(__name__)

StepMode = Literal["auto", "graph", "compile", "eager"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits (B,), labels (B,)) -> batch-mean fp32 loss, as ``haloscope.train.loss.build_loss``."""
GradSync = Callable[[list[torch.Tensor]], None]
"""In-place averaging of the parameters' gradients over ranks (``dist.make_grad_sync``)."""


class EagerTrainStep:
    """One optimiser step per call, op by op (CPU, ``--no-cuda-graphs``, or a compiled model).

    Args:
        model: maps ``(images float32 (B,3,H,W), meta float32 (B,M))`` to logits (B,) or (B,1).
        loss_fn: batch-mean loss from fp32 logits and labels (default: the trainer's focal
            loss, alpha 0.25, gamma 2); the step weights its per-sample values (``vmap``).
        optimizer: the optimiser over ``model``'s parameters.
        device: where the model lives.
        augment: apply a random D4 transform (rot90 x flip) to each sample on the device.
        aug_generator: CUDA/CPU generator of the D4 draws (the trainer's per-rank one, whose
            state goes into checkpoints); None: the default generator of the device.
        amp_dtype: autocast dtype (torch.bfloat16 on CUDA) or None for fp32.
        channels_last: feed the model channels-last images.
        max_grad_norm: clip the global gradient norm to this; 0 disables clipping.
        grad_sync: called with the parameters between backward and the clip to average the
            gradients over ranks (``dist.make_grad_sync``) when ``model`` is not wrapped in
            DDP; None on one process or with a DDP-wrapped model.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, optimizer: torch.optim.Optimizer,
                 *, device: torch.device | str, augment: bool = True,
                 aug_generator: torch.Generator | None = None,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                 max_grad_norm: float = 1.0, grad_sync: GradSync | None = None) -> None:  # fmt: skip
        if max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {max_grad_norm}")
        self.model, self.optimizer = model, optimizer
        self.loss_fn = loss_fn if loss_fn is not None else default_loss_fn()
        self.device = torch.device(device)
        self.augment, self.aug_generator = augment, aug_generator
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.grad_sync = grad_sync

    def _loss_and_update(self, images: torch.Tensor, meta: torch.Tensor, labels: torch.Tensor,
                         weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Augment, forward, weighted loss, backward, clip, optimiser step: (loss, grad_norm)."""
        x = images.float()
        if self.augment:  # per-sample D4 element; shapes never depend on the draw
            k = torch.randint(0, D4_SIZE, (x.shape[0],), device=x.device,
                              generator=self.aug_generator)  # fmt: skip
            x = d4_transform(x, k)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
            logits = self.model(x, meta)
        per_sample = per_sample_loss(self.loss_fn, logits.float().reshape(-1), labels.float())
        tiny = torch.finfo(torch.float32).tiny
        loss = (per_sample * weight).sum() / weight.sum().clamp_min(tiny)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=None)
        self.optimizer.step()
        return loss.detach(), norm.detach()

    def step(self, images: torch.Tensor, meta: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Run one training step on a batch of any size.

        Args:
            images: (B, 3, H, W) float16/float32, host (pinned) or device.
            meta: (B, M) float32 raw meta values (M may be 0).
            labels: (B,) 1 = lens, 0 = control.
            weight: (B,) per-sample loss weight; None: all ones.

        Returns:
            ``{"loss": (), "grad_norm": ()}`` fp32 device tensors (no host sync).
        """
        self.model.train()
        to = {"device": self.device, "non_blocking": True}
        images, meta, labels = images.to(**to), meta.to(**to), labels.to(**to)
        weight = torch.ones_like(labels, dtype=torch.float32) if weight is None else weight.to(**to)
        self.optimizer.zero_grad(set_to_none=True)
        loss, norm = self._loss_and_update(images, meta, labels, weight.float())
        return {"loss": loss, "grad_norm": norm}

    def set_lr(self, lr: float) -> None:
        """Set every param group's learning rate (in place for tensor lrs)."""
        set_lr(self.optimizer, lr)


class GraphedTrainStep(EagerTrainStep):
    """The same step captured in one CUDA graph at a fixed ``batch_size`` (see the module doc).

    The graph is captured lazily on the first ``step`` (3 warm-up steps on a side stream,
    whose parameter and optimiser updates are undone, then the capture), so the first call
    takes a few seconds and the model must already hold its starting (or resumed) weights.

    Raises:
        ValueError: the device is not CUDA, or the optimiser has no ``capturable`` option.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, optimizer: torch.optim.Optimizer,
                 batch_size: int, *, device: torch.device | str, augment: bool = True,
                 aug_generator: torch.Generator | None = None,
                 amp_dtype: torch.dtype | None = torch.bfloat16, channels_last: bool = True,
                 max_grad_norm: float = 1.0, warmup_steps: int = 3,
                 grad_sync: GradSync | None = None) -> None:  # fmt: skip
        super().__init__(model, loss_fn, optimizer, device=device, augment=augment,
                         aug_generator=aug_generator, amp_dtype=amp_dtype,
                         channels_last=channels_last, max_grad_norm=max_grad_norm,
                         grad_sync=grad_sync)  # fmt: skip
        if self.device.type != "cuda":
            raise ValueError(f"a graphed step needs a CUDA device, got {self.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _make_capturable(optimizer, self.device)
        self.batch_size, self.warmup_steps = batch_size, warmup_steps
        self.num_padded_samples = 0
        self._batch: StaticBatch | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[nn.Parameter, dict[str, torch.Tensor]]]:
        return [p.detach().clone() for p in self.params], {
            p: {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
            for p, s in self.optimizer.state.items()}  # fmt: skip

    @torch.no_grad()
    def _restore(self, snap: tuple[list[torch.Tensor], dict]) -> None:
        """Undo the warm-up in place (addresses stay, so the graph sees the restored values)."""
        params, saved = snap
        for p, value in zip(self.params, params, strict=True):
            p.copy_(value)
        for p, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    value.copy_(saved[p][key]) if p in saved else value.zero_()

    def _capture(self) -> None:
        assert self._batch is not None
        s = self._batch.static
        args = (s["images"], s["meta"], s["labels"], s["weight"])
        snap = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._loss_and_update(*args)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(snap)
        # grads are None at capture, so the captured backward writes (not accumulates) them
        self.optimizer.zero_grad(set_to_none=True)
        self._graph = torch.cuda.CUDAGraph()
        if self.augment and self.aug_generator is not None:  # the default one is registered
            self._graph.register_generator_state(self.aug_generator)
        # thread_local: loader pin-memory threads may call CUDA APIs during the capture
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._out = self._loss_and_update(*args)
        log.info("captured the training step in a CUDA graph (batch %d)", self.batch_size)

    def step(self, images: torch.Tensor, meta: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Copy the batch into the static buffers and replay the graph.

        A batch shorter than ``batch_size`` is padded with zero-weight samples (counted in
        ``num_padded_samples``); a longer one is an error. Returns like ``EagerTrainStep.step``.
        """
        if self._batch is None:
            self.model.train()
            self._batch = StaticBatch.for_batch(self.batch_size, images, meta, self.device,
                                                with_labels=True)  # fmt: skip
        n = self._batch.load(images, meta, labels, weight)
        if n < self.batch_size:
            self.num_padded_samples += self.batch_size - n
            log.info("padded a batch of %d with %d zero-weight samples", n, self.batch_size - n)
        if self._graph is None:
            self._capture()
        assert self._graph is not None and self._out is not None
        self._graph.replay()
        return {"loss": self._out[0].clone(), "grad_norm": self._out[1].clone()}


class EagerPredictStep:
    """Inference logits op by op: eval mode, no grad, autocast, fp32 logits out.

    Args:
        model: as for ``EagerTrainStep``.
        device: where the model lives.
        batch_size: largest batch run at once; longer inputs are chunked.
        amp_dtype: autocast dtype or None for fp32.
        channels_last: feed the model channels-last images.
    """

    def __init__(self, model: nn.Module, *, device: torch.device | str, batch_size: int = 1024,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = True) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.device, self.batch_size = model, torch.device(device), batch_size
        self.amp_dtype, self.channels_last = amp_dtype, channels_last

    @torch.no_grad()
    def _forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
            logits = self.model(x, meta)
        return logits.float().reshape(-1)

    def _chunk(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        to = {"device": self.device, "non_blocking": True}
        return self._forward(images.to(**to), meta.to(**to))

    def predict(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Logits (N,) fp32 on the device for images (N,3,H,W) and meta (N,M), any N."""
        was_training = self.model.training
        self.model.eval()
        try:
            outs = [self._chunk(images[i : i + self.batch_size], meta[i : i + self.batch_size])
                    for i in range(0, images.shape[0], self.batch_size)]  # fmt: skip
        finally:
            self.model.train(was_training)
        return torch.cat(outs) if outs else torch.empty(0, device=self.device)


class GraphedPredictStep(EagerPredictStep):
    """``EagerPredictStep`` captured in a CUDA graph at ``batch_size``; short chunks are padded."""

    def __init__(self, model: nn.Module, *, device: torch.device | str, batch_size: int = 1024,
                 amp_dtype: torch.dtype | None = torch.bfloat16, channels_last: bool = True,
                 warmup_steps: int = 3) -> None:  # fmt: skip
        super().__init__(model, device=device, batch_size=batch_size, amp_dtype=amp_dtype,
                         channels_last=channels_last)  # fmt: skip
        if self.device.type != "cuda":
            raise ValueError(f"a graphed step needs a CUDA device, got {self.device}")
        self.warmup_steps = warmup_steps
        self._batch: StaticBatch | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None

    def _capture(self) -> None:
        assert self._batch is not None
        args = (self._batch.static["images"], self._batch.static["meta"])
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self._forward(*args)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._out = self._forward(*args)
        log.info("captured the inference step in a CUDA graph (batch %d)", self.batch_size)

    def _chunk(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        if self._batch is None:
            self._batch = StaticBatch.for_batch(self.batch_size, images, meta, self.device,
                                                with_labels=False)  # fmt: skip
        n = self._batch.load(images, meta)
        if self._graph is None:
            self._capture()
        assert self._graph is not None and self._out is not None
        self._graph.replay()
        return self._out[:n].clone()


def _make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Graph-safe optimiser settings: device-side step counts and tensor learning rates.

    Optimisers built without ``capturable=True`` (or resumed from an eager run, whose saved
    param groups say ``capturable=False``) are switched in place; a float lr would otherwise
    be baked into the captured kernels and the schedule would stop.

    Raises:
        ValueError: the optimiser has no ``capturable`` option (not Adam/AdamW-like).
    """
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise ValueError(f"{type(optimizer).__name__} cannot run inside a CUDA graph")
        if not group["capturable"]:
            log.info("switching the optimiser to capturable=True for the CUDA graph")
            group["capturable"] = True
        # also for a graphed run's own checkpoint: loaded with map_location="cpu", its lr
        # tensor is on the CPU, and a host tensor in the step breaks the capture
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device != device:
                optimizer.state[p]["step"] = step.to(device, torch.float32)
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor):
            group["lr"] = torch.tensor(float(lr), device=device)
        elif lr.device != device:
            group["lr"] = lr.to(device, torch.float32)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every param group: in place for tensor lrs (graph-safe), else assign."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def resolve_step_mode(
    mode: StepMode, device: torch.device | str, *, distributed: bool = False,
    grad_sync: bool = False,
) -> str:  # fmt: skip
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
        raise ValueError(f"a graphed step needs CUDA and, on several ranks, a gradient sync; "
                         f"got {device}, ddp={distributed}, grad_sync={grad_sync}")  # fmt: skip
    if mode == "auto":
        return "graph" if graph_ok else "eager"
    return mode


def make_train_step(model: nn.Module, loss_fn: LossFn | None, optimizer: torch.optim.Optimizer,
                    batch_size: int, *, device: torch.device | str, mode: StepMode = "auto",
                    distributed: bool = False, augment: bool = True,
                    aug_generator: torch.Generator | None = None, bf16: bool | None = None,
                    channels_last: bool = True, max_grad_norm: float = 1.0,
                    grad_sync: GradSync | None = None) -> EagerTrainStep:  # fmt: skip
    """Build the training step: ``graph``, ``compile`` (torch.compile default mode) or ``eager``.

    Args:
        bf16: bf16 autocast; None: on for CUDA, off (fp32) elsewhere.
        grad_sync: on several ranks with an unwrapped model, the gradient averaging
            (``dist.make_grad_sync``); it is what lets ``graph`` run under torchrun.
        Others: as for ``EagerTrainStep`` / ``GraphedTrainStep`` and ``resolve_step_mode``.
    """
    device = torch.device(device)
    kind = resolve_step_mode(mode, device, distributed=distributed, grad_sync=grad_sync is not None)
    amp = torch.bfloat16 if (device.type == "cuda" if bf16 is None else bf16) else None
    common = {"device": device, "augment": augment, "aug_generator": aug_generator,
              "amp_dtype": amp, "channels_last": channels_last,
              "max_grad_norm": max_grad_norm, "grad_sync": grad_sync}  # fmt: skip
    log.info("training step: %s (asked %s) on %s", kind, mode, device)
    if kind == "graph":
        return GraphedTrainStep(model, loss_fn, optimizer, batch_size, **common)
    if kind == "compile":
        model = torch.compile(model, dynamic=False)  # type: ignore[assignment]
    return EagerTrainStep(model, loss_fn, optimizer, **common)


def make_predict_step(model: nn.Module, *, device: torch.device | str, batch_size: int = 1024,
                      mode: StepMode = "auto", bf16: bool | None = None,
                      channels_last: bool = True) -> EagerPredictStep:  # fmt: skip
    """Build the inference step; modes as for ``make_train_step`` (no DDP: scoring is per rank)."""
    device = torch.device(device)
    kind = resolve_step_mode(mode, device)
    amp = torch.bfloat16 if (device.type == "cuda" if bf16 is None else bf16) else None
    common = {"device": device, "batch_size": batch_size, "amp_dtype": amp,
              "channels_last": channels_last}  # fmt: skip
    if kind == "graph":
        return GraphedPredictStep(model, **common)
    if kind == "compile":
        model = torch.compile(model, dynamic=False)  # type: ignore[assignment]
    return EagerPredictStep(model, **common)
