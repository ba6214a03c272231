"""Colour composites of g/r/z stamps: the one implementation behind every stamp picture.

The search gallery (``infer/gallery.py``) and the evaluation report's galleries
(``evaluate/report.py``) draw stamps the same way: bands z, r, g as R, G, B, each in units
of its sky noise (the stamp as the model sees it: ``preprocess.normalize``), negative
values at black and an asinh stretch that reaches white at 10 sigma. Raw nanomaggy stamps
are normalised first (:func:`raw_stamp_rgb`), so a candidate looks the same in the search
gallery as in an eval report made from the shards' stores.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.image import imsave  # no pyplot: no backend, no figure

from haloscope.atomic import atomic_write_bytes
from haloscope.preprocess.normalize import normalize

__all__ = ["DISPLAY_NORM", "stamp_rgb", "raw_stamp_rgb", "rgb_png_bytes", "save_stamp_png"]

DISPLAY_NORM = "asinh"
"""How raw stamps are put in sky-sigma units for display (the shards' default stretch)."""
_WHITE_SIGMA = 10.0


def stamp_rgb(stamp: np.ndarray) -> np.ndarray:
    """An RGB image of a normalised stamp: bands z, r, g as R, G, B, asinh stretch.

    Args:
        stamp: (3, H, W) bands g, r, z in robust sigmas (clipped to +-10 by the converter).

    Returns:
        float (H, W, 3) in [0, 1].
    """
    img = np.arcsinh(np.clip(stamp[::-1], 0, None)) / math.asinh(_WHITE_SIGMA)
    return np.clip(np.transpose(img, (1, 2, 0)), 0, 1)


def raw_stamp_rgb(stamps: np.ndarray) -> np.ndarray:
    """RGB images of raw stamps (nanomaggies): normalised as for training, then :func:`stamp_rgb`.

    Args:
        stamps: (N, 3, H, W) float bands g, r, z in nanomaggies; NaN pixels show black.

    Returns:
        float32 (N, H, W, 3) in [0, 1].
    """
    stamps = np.asarray(stamps, dtype=np.float32)
    if stamps.ndim != 4 or stamps.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) g/r/z stamps, got shape {stamps.shape}")
    # NaN pixels would turn the band's median into NaN: show them as sky (0) instead
    norm = normalize(np.nan_to_num(stamps, nan=0.0, posinf=0.0, neginf=0.0), DISPLAY_NORM)
    return np.stack([stamp_rgb(s) for s in norm]).astype(np.float32)


def rgb_png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG of one (H, W, 3) [0, 1] image, row 0 at the bottom as in sky images."""
    buffer = io.BytesIO()
    imsave(buffer, rgb, origin="lower", format="png")
    return buffer.getvalue()


def save_stamp_png(stamp: np.ndarray, path: Path) -> Path:
    """One normalised stamp as a PNG of its native size (the page scales it up, pixelated).

    Args:
        stamp: (3, H, W) bands g, r, z, normalised.
        path: PNG to write (atomically).
    """
    return atomic_write_bytes(path, rgb_png_bytes(stamp_rgb(stamp)))
