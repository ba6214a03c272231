"""D4 test-time augmentation: the 8 rotations/reflections of a square stamp.

The training augmentation (``reference/original_pipeline.md`` section 2) draws from the
same group: ``rot90`` by k in {0,1,2,3}, then optional flips. Every composition of those is
one of the 8 elements ``rot90(x, k)`` and ``rot90(flip(x), k)``, so averaging the model's
logits over them makes the prediction invariant (up to float summation order) to the group.
We average *logits* (not probabilities), computed in fp32 and summed in fp64, so the mean is not dominated by
saturated sigmoids.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["NUM_D4", "d4_transform", "d4_views", "tta_logits"]

NUM_D4 = 8


def d4_transform(images: torch.Tensor, index: int) -> torch.Tensor:
    """Element ``index`` (0..7) of D4 applied to the last two axes of ``images``.

    Args:
        images: (B, C, H, W) with H == W.
        index: 0..3 rotate by ``index`` quarter turns; 4..7 flip left-right, then rotate
            by ``index - 4`` quarter turns. Index 0 is the identity.

    Returns:
        The transformed tensor (a contiguous copy unless ``index`` is 0).
    """
    if not 0 <= index < NUM_D4:
        raise ValueError(f"D4 index must be in 0..7, got {index}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"D4 needs square images, got {tuple(images.shape[-2:])}")
    if index == 0:
        return images
    out = torch.flip(images, dims=(-1,)) if index >= 4 else images
    k = index % 4
    if k:
        out = torch.rot90(out, k, dims=(-2, -1))
    return out.contiguous()


def d4_views(images: torch.Tensor) -> list[torch.Tensor]:
    """All 8 D4 images of a batch, identity first."""
    return [d4_transform(images, i) for i in range(NUM_D4)]


def tta_logits(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    meta: torch.Tensor,
) -> torch.Tensor:
    """Mean fp32 logit over the 8 D4 views of ``images``.

    Each view is a separate call of ``forward`` at the caller's batch size (the batch is not
    tiled 8x), so memory and the respected ``--batch-size`` stay the same as without TTA.

    Args:
        forward: ``(images, meta) -> (B,) fp32 logits``.
        images: (B, C, H, W) normalised stamps on the model's device.
        meta: (B, M) raw meta values (unchanged by the geometric transforms).

    Returns:
        (B,) float32 mean logits.
    """
    # NOTE: fp64 accumulation makes the sum of 8 fp32 logits exact in practice, so the mean
    # does not depend on the order of the views: TTA(g x) == TTA(x) bit for bit for g in D4.
    total = torch.zeros(images.shape[0], dtype=torch.float64, device=images.device)
    for index in range(NUM_D4):
        total += forward(d4_transform(images, index), meta).double()
    return (total / NUM_D4).float()
