"""Stamp normalisation: per band median and MAD over the stamp's outer pixels, then a stretch.

For each band: ``med`` and ``mad = median(|x - med|)`` over pixels farther than 16 px from
the centre (32, 32) (3,299 of 4,096 px for 64x64), ``z = (x - med) / (1.4826 * mad + 1e-6)``
(the stamp in units of its sky noise), then one of two stretches (``--norm-method``):

- ``outer``: ``clip(z, -10, 10)``. The seed's ``robust_mad_norm_outer``
  (``reference/original_pipeline.md`` section 2), vectorised. It saturates: bright arcs and
  the LRG core are flat at 10, which erases their colour and any counter-image in the core.
- ``asinh``: ``a * asinh(z / a)`` with softening ``a = 3``. Linear (``~z``) within a few sigma,
  so the noise looks as under ``outer``; logarithmic beyond, so it never saturates
  (10 sigma -> 5.8, 100 -> 12.6, 1000 -> 19.5) and band ratios of bright pixels survive.
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
    "asinh_normalize",
    "normalize",
    "norm_settings",
]

NORM_METHODS: tuple[str, ...] = ("outer", "asinh")
OUTER_RADIUS_PX = 16
CLIP = 10.0
ASINH_SOFTENING = 3.0
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


def _sky_sigma_units(stamps: np.ndarray) -> np.ndarray:
    """``(x - med) / (1.4826 * mad + eps)`` per stamp and band, over the outer pixels."""
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
    return (x - med[..., None]) / scale[..., None]


def outer_normalize(stamps: np.ndarray, clip: float = CLIP) -> np.ndarray:
    """The seed's normalisation: sky-sigma units clipped to ``[-clip, clip]``.

    Args:
        stamps: (N, C, H, W) float array (nanomaggies).
        clip: symmetric clip applied after scaling.

    Returns:
        (N, C, H, W) float32 normalised stamps.
    """
    out = _sky_sigma_units(stamps)
    return np.clip(out, -clip, clip, out=out).astype(np.float32, copy=False)


def asinh_normalize(stamps: np.ndarray, softening: float = ASINH_SOFTENING) -> np.ndarray:
    """Sky-sigma units through ``a * asinh(z / a)``: linear near the noise, never saturating."""
    z = _sky_sigma_units(stamps)
    np.multiply(z, 1.0 / softening, out=z)
    np.arcsinh(z, out=z)
    np.multiply(z, softening, out=z)
    return z.astype(np.float32, copy=False)


def normalize(stamps: np.ndarray, method: str = "outer") -> np.ndarray:
    """Normalise (N, C, H, W) stamps with the named method (one of ``NORM_METHODS``)."""
    if method == "outer":
        return outer_normalize(stamps)
    if method == "asinh":
        return asinh_normalize(stamps)
    raise ValueError(f"--norm-method must be one of {NORM_METHODS}, got {method!r}")


def norm_settings(method: str = "outer") -> dict:
    """The normalisation settings recorded in manifests and checkpoints."""
    if method not in NORM_METHODS:
        raise ValueError(f"--norm-method must be one of {NORM_METHODS}, got {method!r}")
    settings = {
        "method": method,
        "outer_radius_px": OUTER_RADIUS_PX,
        "mad_scale": MAD_SCALE,
        "eps": EPS,
    }
    if method == "outer":
        return {**settings, "clip": CLIP}
    return {**settings, "softening": ASINH_SOFTENING}
