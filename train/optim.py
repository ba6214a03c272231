"""AdamW with decay only on weight matrices/kernels, and a per-step warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_factor", "build_scheduler", "warmup_steps"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: decay on >= 2-D weights, none on norms, biases and 1-D params.

    Buffers (e.g. the meta mean/std) are not parameters, so the optimiser never sees them.

    Args:
        model: the model (unwrapped or not).
        weight_decay: decay of the first group.

    Returns:
        Two AdamW parameter groups (decay, no decay).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = ".norm" in name or name.startswith("norm") or "norm." in name
        (no_decay if param.ndim < 2 or is_norm or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, ...] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW (fused on CUDA) over ``param_groups``."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, weight_decay),
        lr=lr,
        betas=(betas[0], betas[1]),
        fused=True if on_cuda else None,
    )


def warmup_steps(total_steps: int, steps: int | None, frac: float) -> int:
    """Warmup length: ``steps`` if given, else ``round(frac * total_steps)``."""
    return int(steps) if steps is not None else int(round(frac * total_steps))


def lr_factor(step: int, *, total_steps: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak LR at optimiser step ``step`` (0-based).

    Linear warmup from 1/warmup to 1 over ``warmup`` steps, then cosine from 1 to
    ``min_ratio`` at ``total_steps``; constant ``min_ratio`` beyond.
    """
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Schedule:
    """Picklable-free callable for LambdaLR; its state (plain numbers) goes into state_dict."""

    def __init__(self, total_steps: int, warmup: int, min_ratio: float) -> None:
        self.total_steps, self.warmup, self.min_ratio = total_steps, warmup, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(
            step, total_steps=self.total_steps, warmup=self.warmup, min_ratio=self.min_ratio
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup: int, lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warmup + cosine as a ``LambdaLR`` (call ``.step()`` after each optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(total_steps, warmup, min_lr / lr))
