"""Training losses, computed in fp32 from logits (the seed computed focal loss in bf16: B10).

Focal loss in log-sigmoid form, stable for any logit:

    log p = logsigmoid(z),  log(1 - p) = logsigmoid(-z)
    L = -w(y) * (1 - p_t)^gamma * log p_t,   p_t = p if y = 1 else 1 - p
    w(1) = alpha, w(0) = 1 - alpha   (alpha = None: w = 1)

so gamma = 0 gives alpha-weighted BCE, and with alpha = None (or 0.5, up to a factor 2)
plain BCE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from haloscope.errors import ConfigError

__all__ = ["focal_loss", "bce_loss", "build_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, alpha: float | None = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017) from logits, in fp32.

    Args:
        logits: (B,) raw scores, any float dtype (cast to fp32).
        labels: (B,) 1 = lens, 0 = control (float or int).
        alpha: weight on positives (1 - alpha on controls); None: no class weighting.
        gamma: focusing parameter >= 0.

    Returns:
        Scalar fp32 loss.
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
    return loss.mean()


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy from logits, in fp32."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def build_loss(name: str, *, alpha: float | None = 0.25, gamma: float = 2.0) -> LossFn:
    """The loss function named by ``--loss``.

    Args:
        name: ``focal`` or ``bce``.
        alpha: focal alpha (ignored for bce).
        gamma: focal gamma (ignored for bce).

    Returns:
        ``fn(logits, labels) -> scalar fp32 loss``.

    Raises:
        ConfigError: unknown name.
    """
    if name == "focal":

        def fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return focal_loss(logits, labels, alpha=alpha, gamma=gamma)

        return fn
    if name == "bce":
        return bce_loss
    raise ConfigError(f"--loss must be focal or bce, got {name!r}")
