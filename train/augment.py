"""D4 augmentation (the 8 rotations/flips of a square) per sample, on the device.

Written with tensor ops only: one ``randint`` from an explicit ``torch.Generator`` picks a
group element per sample, and one ``gather`` with precomputed pixel permutations applies it.
Shapes never depend on the draw and there is no Python-side randomness, so the step can be
captured in a CUDA graph later. The seed drew rot90 k ~ U{0..3}, then horizontal and
vertical flips with p = 0.5; that is the uniform distribution over the same 8 elements.
"""

from __future__ import annotations

import torch

__all__ = ["D4_SIZE", "d4_index", "d4_transform", "d4_augment", "make_generator"]

D4_SIZE = 8
_INDEX_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def d4_index(size_px: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel permutations of the 8 D4 elements of a square image.

    Element ``g = k + 4 * f`` is ``rot90(k)`` (in the H, W plane, as ``torch.rot90``)
    followed by a flip of the W axis when ``f = 1``.

    Args:
        size_px: image side H = W.
        device: where the index lives.

    Returns:
        (8, H*W) int64: ``out.flatten()[j] = img.flatten()[index[g, j]]``.
    """
    key = (size_px, str(device))
    if key not in _INDEX_CACHE:
        base = torch.arange(size_px * size_px).reshape(size_px, size_px)
        rows = []
        for flip in (False, True):
            for k in range(4):
                view = torch.rot90(base, k, dims=(0, 1))
                rows.append((torch.flip(view, dims=(1,)) if flip else view).reshape(-1))
        _INDEX_CACHE[key] = torch.stack(rows).to(device)
    return _INDEX_CACHE[key]


def d4_transform(images: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
    """Apply D4 element ``elements[i]`` to ``images[i]``.

    Args:
        images: (B, C, H, W) with H == W.
        elements: (B,) int64 in 0..7.

    Returns:
        (B, C, H, W) transformed copy (contiguous NCHW).
    """
    b, c, h, w = images.shape
    if h != w:
        raise ValueError(f"D4 augmentation needs square images, got {h}x{w}")
    index = d4_index(h, images.device)[elements]  # (B, H*W)
    flat = images.reshape(b, c, h * w)
    return flat.gather(2, index.unsqueeze(1).expand(b, c, h * w)).reshape(b, c, h, w)


def d4_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random D4 element per sample, drawn from ``generator`` (on the images' device).

    Args:
        images: (B, C, H, W) square images.
        generator: a ``torch.Generator`` on ``images.device``.

    Returns:
        (B, C, H, W) augmented images.
    """
    elements = torch.randint(
        0, D4_SIZE, (images.shape[0],), generator=generator, device=images.device
    )
    return d4_transform(images, elements)


def make_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The augmentation generator of one rank: seeded from (seed, rank), on ``device``."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + 7919 * rank + 17) % (2**63 - 1))
    return gen
