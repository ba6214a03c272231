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


def _median_last(x: np.ndarray) -> np.ndarray:
    """Median over the last axis with one partition (both middles for an even count)."""
    n = x.shape[-1]
    half = n // 2
    if n % 2:
        return np.partition(x, half, axis=-1)[..., half : half + 1]
    part = np.partition(x, (half - 1, half), axis=-1)
    return 0.5 * (part[..., half - 1 : half] + part[..., half : half + 1])


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
    n, c, h, w = x.shape
    flat_idx = np.flatnonzero(outer_mask(w, OUTER_RADIUS_PX))
    outer = x.reshape(n, c, h * w)[:, :, flat_idx]  # (N, C, P) gather, P = 3299 for 64 px
    med = _median_last(outer)
    np.subtract(outer, med, out=outer)
    np.abs(outer, out=outer)
    mad = _median_last(outer)
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
