"""An exponential moving average of the model's weights (``--ema-decay``, off by default).

After every optimiser step, inside the training step (``train.step.train_step``), every
parameter's average moves towards the new weights::

    t       = optimiser steps done, this one included (1 at the first update)
    decay_t = min(decay, (1 + t) / (10 + t))        # warm-up: early weights fade fast
    ema     = decay_t * ema + (1 - decay_t) * param

and the buffers (``meta_mean``/``meta_std``) are copied. The average lives in a copy of the
model (``WeightEMA.module``), which validation scores, so early stopping and best.pt follow
it; checkpoints store its state_dict as ``ema_model`` and inference loads it.

The update is capturable in a CUDA graph: the step count is a device tensor, the decay is
computed on the device, all tensors exist before the capture and are updated in place with
``torch._foreach_*`` ops, and nothing branches on a device value. Under torchrun every rank
holds the same weights after the gradient all-reduce, so every rank's average is the same
without a collective.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["WeightEMA", "ema_decay_at"]


def ema_decay_at(decay: float, t: torch.Tensor) -> torch.Tensor:
    """The decay of update ``t`` (1-based, a device tensor): ``min(decay, (1+t)/(10+t))``."""
    return torch.clamp((1.0 + t) / (10.0 + t), max=decay)


class WeightEMA:
    """The moving average of ``model``'s weights, kept in a frozen copy of the model.

    Args:
        model: the unwrapped model being trained (its parameters are read, never written).
        decay: the long-run decay, in (0, 1) (e.g. 0.999).

    Raises:
        ValueError: ``decay`` outside (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).requires_grad_(False)
        self._src = [p.detach() for p in model.parameters()]
        self._avg = [p.detach() for p in self.module.parameters()]
        self._src_buffers = list(model.buffers())
        self._avg_buffers = list(self.module.buffers())
        device = self._avg[0].device
        self.num_updates = torch.zeros((), dtype=torch.float32, device=device)
        """Updates done (``t`` of the last update): float32 on the model's device."""

    @torch.no_grad()
    def update(self) -> None:
        """One update after an optimiser step (device ops only: capturable)."""
        self.num_updates.add_(1.0)
        decay = ema_decay_at(self.decay, self.num_updates)
        torch._foreach_mul_(self._avg, decay)
        torch._foreach_add_(self._avg, torch._foreach_mul(self._src, 1.0 - decay))
        for avg, src in zip(self._avg_buffers, self._src_buffers, strict=True):
            avg.copy_(src)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore the averaged weights (a checkpoint's ``ema_model``) and the step count
        (the checkpoint's global step: the average is updated once per optimiser step)."""
        self.module.load_state_dict(state)
        self.num_updates.fill_(float(num_updates))

    def snapshot(self) -> Callable[[], None]:
        """A function that puts the average and its step count back to their values now
        (in place: a CUDA graph keeps these addresses)."""
        saved = [t.clone() for t in (*self._avg, *self._avg_buffers, self.num_updates)]

        @torch.no_grad()
        def restore() -> None:
            for t, value in zip(
                (*self._avg, *self._avg_buffers, self.num_updates), saved, strict=True
            ):
                t.copy_(value)

        return restore
