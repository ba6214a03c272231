"""``outer`` normalisation: per band median and MAD over the stamp's outer pixels.

For each band: ``med`` and ``mad = median(|x - med|)`` over pixels farther than 16 px from
the centre (32, 32) (3,299 of 4,096 px for 64x64), then
``clip((x - med) / (1.4826 * mad + 1e-6), -10, 10)`` on the whole stamp. This is the seed's
``robust_mad_norm_outer`` (``reference/original_pipeline.md`` section 2), vectorised.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NORM_METHODS",
    "OUTER_RADIUS_PX",
    "CLIP",
    "MAD_SCALE",
    "EPS",
    "outer_mask",
    "outer_normalize",
    "norm_settings",
]

NORM_METHODS: tuple[str, ...] = ("outer",)
OUTER_RADIUS_PX = 16
CLIP = 10.0
MAD_SCALE = 1.4826
EPS = 1e-6


def outer_mask(size_px: int = 64, radius_px: int = OUTER_RADIUS_PX) -> np.ndarray:
    """Boolean (size, size) mask of pixels with (y-c)^2 + (x-c)^2 > r^2, c = size // 2."""
    c = size_px // 2
    yy, xx = np.mgrid[:size_px, :size_px]
    return (yy - c) ** 2 + (xx - c) ** 2 > radius_px**2


def outer_normalize(stamps: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """Normalise a batch of stamps band by band.

    Args:
        stamps: (N, C, H, W) float array (nanomaggies).
        clip: symmetric clip applied after scaling.

    Returns:
        (N, C, H, W) float32 normalised stamps.
    """
    if stamps.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) stamps, got shape {stamps.shape}")
    x = np.asarray(stamps, dtype=np.float32)
    mask = outer_mask(x.shape[-1], OUTER_RADIUS_PX)
    outer = x[:, :, mask]  # (N, C, P)
    med = np.median(outer, axis=-1, keepdims=True)
    mad = np.median(np.abs(outer - med), axis=-1, keepdims=True)
    scale = (MAD_SCALE * mad + EPS).astype(np.float32)
    out = (x - med[..., None]) / scale[..., None]
    return np.clip(out, -clip, clip, out=out).astype(np.float32, copy=False)


def norm_settings(method: str = "outer") -> dict:
    """The normalisation settings recorded in manifests and checkpoints."""
    if method not in NORM_METHODS:
        raise ValueError(f"--norm-method must be one of {NORM_METHODS}, got {method!r}")
    return {
        "method": method,
        "outer_radius_px": OUTER_RADIUS_PX,
        "clip": CLIP,
        "mad_scale": MAD_SCALE,
        "eps": EPS,
    }
