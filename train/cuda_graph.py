"""CUDA-graph capture of a step function: warm up, capture once, replay on every call.

At 64x64 a ConvNeXt-Tiny step is launch-bound (issue 9): cudnn runs each bf16 NHWC depthwise
7x7 convolution as ~105 tiny kernels, so the eager step spends more time launching than
computing. ``GraphedCall`` captures a step function *as it is* (the same ``train_step`` or
``eval_logits`` of ``train/step.py`` that eager and compiled runs call) in one
``torch.cuda.CUDAGraph`` and replays it. The function reads its inputs from static buffers
(``graph_io.StaticBatch``) and the graph's outputs are the tensors it returned at capture,
overwritten by every replay.

Randomness (the D4 element per sample, dropout, stochastic depth) comes from the default
CUDA generator, which a capture registers, and from the generators passed in
``generators``: every replay draws fresh numbers.

Optimisers inside a graph must be capturable with a tensor learning rate
(``make_capturable``); change the rate only by writing that tensor in place (``set_lr``,
or any torch ``LRScheduler``, which fills tensor lrs in place).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["GraphedCall", "make_capturable", "set_lr"]

log = logging.getLogger(__name__)


class GraphedCall:
    """``fn()`` captured in one CUDA graph on the first call and replayed on every call.

    Args:
        fn: the step; takes no arguments (it reads static buffers) and returns tensors.
        device: the CUDA device.
        warmup_steps: eager calls on a side stream before the capture (library autotuning,
            lazy allocations, optimiser state creation).
        generators: generators besides the default CUDA one to register with the graph.
        undo_warmup: called before the warm-up; returns a function, called after it, that
            undoes its effects (a training step's weight and optimiser updates).
        name: what the log line calls the step.

    Raises:
        ValueError: ``device`` is not a CUDA device.
    """

    def __init__(
        self,
        fn: Callable[[], Any],
        device: torch.device,
        *,
        warmup_steps: int = 3,
        generators: Sequence[torch.Generator] = (),
        undo_warmup: Callable[[], Callable[[], None]] | None = None,
        name: str = "step",
    ) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"a graphed step needs a CUDA device, got {device}")
        self.fn, self.device, self.warmup_steps = fn, torch.device(device), warmup_steps
        self.generators, self.undo_warmup, self.name = tuple(generators), undo_warmup, name
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Any = None

    def _capture(self) -> None:
        restore = self.undo_warmup() if self.undo_warmup is not None else None
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.fn()
        main.wait_stream(side)
        if restore is not None:
            restore()
        graph = torch.cuda.CUDAGraph()
        for gen in self.generators:
            graph.register_generator_state(gen)
        # thread_local: loader pin-memory threads may call CUDA APIs during the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.out = self.fn()
        self.graph = graph
        log.info("captured the %s in a CUDA graph", self.name)

    def capture(self) -> None:
        """Warm up and capture now (once; later calls do nothing), without a replay."""
        if self.graph is None:
            self._capture()

    def __call__(self) -> Any:
        """Replay (capturing first if needed); returns the graph's output tensors."""
        self.capture()
        assert self.graph is not None
        self.graph.replay()
        return self.out


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
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
