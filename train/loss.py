"""Training losses, computed in fp32 from logits (the seed computed focal loss in bf16: B10).

Focal loss in log-sigmoid form, stable for any logit:

    log p = logsigmoid(z),  log(1 - p) = logsigmoid(-z)
    L = -w(y) * (1 - p_t)^gamma * log p_t,   p_t = p if y = 1 else 1 - p
    w(1) = alpha, w(0) = 1 - alpha   (alpha = None: w = 1)

so gamma = 0 gives alpha-weighted BCE, and with alpha = None (or 0.5, up to a factor 2)
plain BCE.

Every loss takes ``reduction``: ``"mean"`` (the batch mean, what validation reports),
``"sum"`` or ``"none"`` (the per-sample values (B,), which the training step weights so
that zero-weight padding rows drop out of a static-shape batch). The focal defaults
(alpha 0.25, gamma 2) live in one place, ``train.config.LossConfig``.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from haloscope.errors import ConfigError
from haloscope.train.config import LossConfig

__all__ = ["Reduction", "LossFn", "focal_loss", "bce_loss", "build_loss"]

Reduction = Literal["mean", "sum", "none"]


class LossFn(Protocol):
    """``fn(logits (B,), labels (B,), reduction="mean") -> fp32 loss`` (scalar, or (B,))."""

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean"
    ) -> torch.Tensor: ...


_REDUCTIONS = ("mean", "sum", "none")


def _check(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def _reduce(loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    _check(reduction)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float | None,
    gamma: float,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) from logits, in fp32.

    Args:
        logits: (B,) raw scores, any float dtype (cast to fp32).
        labels: (B,) 1 = lens, 0 = control (float or int).
        alpha: weight on positives (1 - alpha on controls); None: no class weighting.
        gamma: focusing parameter >= 0.
        reduction: ``mean``, ``sum`` or ``none`` (per-sample values).

    Returns:
        fp32 loss: a scalar, or (B,) for ``none``.
    """
    z = logits.float()
    y = labels.float()
    log_p = F.logsigmoid(z)  # log p
    log_1mp = F.logsigmoid(-z)  # log(1 - p)
    log_pt = y * log_p + (1.0 - y) * log_1mp
    # 1 - p_t = p if y = 0 else 1 - p, as exp of a log-sigmoid: exact in the tails
    one_minus_pt = torch.exp(y * log_1mp + (1.0 - y) * log_p)
    loss = -log_pt if gamma == 0 else -(one_minus_pt**gamma) * log_pt
    if alpha is not None:
        loss = loss * (alpha * y + (1.0 - alpha) * (1.0 - y))
    return _reduce(loss, reduction)


def bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Binary cross-entropy from logits, in fp32."""
    _check(reduction)
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction=reduction)


def build_loss(cfg: LossConfig | None = None) -> LossFn:
    """The loss selected by ``LossConfig`` (``--loss``, ``--focal-alpha``, ``--focal-gamma``).

    Args:
        cfg: the loss section; None: its defaults (focal, alpha 0.25, gamma 2).

    Returns:
        ``fn(logits, labels, reduction="mean") -> fp32 loss``.

    Raises:
        ConfigError: unknown loss name.
    """
    cfg = LossConfig() if cfg is None else cfg
    if cfg.name == "focal":
        alpha, gamma = cfg.alpha, cfg.gamma

        def focal(
            logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean"
        ) -> torch.Tensor:
            return focal_loss(logits, labels, alpha=alpha, gamma=gamma, reduction=reduction)

        return focal
    if cfg.name == "bce":
        return bce_loss
    raise ConfigError(f"--loss must be focal or bce, got {cfg.name!r}")
