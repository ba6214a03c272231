"""Lens-like control galaxies (confusers): rings, spirals, edge-on disks, mergers, blue companions.

Recipes follow ``reference/science.md`` section 4.3. Each renderer returns the extra light that
is added to an ordinary LRG control *before* PSF convolution and noise, so confusers share the
lens-light, PSF and depth distributions of every other row (no survey-property shortcut).
Magnitudes are relative to the host's r magnitude, so the features range from barely visible
to obvious, like the arcs of the positives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from haloscope.preprocess.sim_physics import (
    STAMP_PX,
    bin_image,
    elliptical_radius,
    mag_to_nmgy,
    pixel_grid,
    sersic_bn,
    sersic_shape,
)

__all__ = ["render_confusers", "RENDERERS"]

_OVERSAMPLE = 2
_AX = pixel_grid(STAMP_PX, _OVERSAMPLE).astype(np.float32)
_X = _AX[None, None, :]  # (1, 1, 128) arcsec
_Y = _AX[None, :, None]  # (1, 128, 1)


def _u(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return rng.uniform(lo, hi, n)[:, None, None].astype(np.float32)


def _unit(shape: np.ndarray) -> np.ndarray:
    """Normalise (n, 128, 128) fine maps to unit total flux and bin to (n, 64, 64) pixels."""
    pix = bin_image(shape, _OVERSAMPLE)
    return pix / np.maximum(pix.sum(axis=(1, 2), keepdims=True), 1e-30)


def _bands(
    unit_img: np.ndarray, flux_r: np.ndarray, g_r: np.ndarray, r_z: np.ndarray
) -> np.ndarray:
    """(n, 64, 64) unit map + r flux and colours -> (n, 3, 64, 64) nmgy per pixel."""
    scale = np.stack([10 ** (-0.4 * g_r), np.ones_like(g_r), 10 ** (0.4 * r_z)], axis=1)
    return (unit_img[:, None] * (flux_r[:, None] * scale)[:, :, None, None]).astype(np.float32)


def _sersic_at(rng, n, dist_lo, dist_hi, reff_lo, reff_hi, q_lo, q_hi, radial_pa=False):
    """Unit-flux Sersic blobs at a random offset; returns (n, 64, 64)."""
    dist, ang = rng.uniform(dist_lo, dist_hi, n), rng.uniform(0, 2 * np.pi, n)
    cx = (dist * np.cos(ang))[:, None, None].astype(np.float32)
    cy = (dist * np.sin(ang))[:, None, None].astype(np.float32)
    idx = rng.uniform(0.5, 1.5, n)
    pa = np.where(radial_pa, ang, rng.uniform(0, np.pi, n))
    radius = elliptical_radius(
        _X - cx, _Y - cy, _u(rng, q_lo, q_hi, n), pa[:, None, None].astype(np.float32)
    )
    bn = sersic_bn(idx)[:, None, None].astype(np.float32)
    shape = sersic_shape(
        radius, _u(rng, reff_lo, reff_hi, n), idx[:, None, None].astype(np.float32), bn
    )
    return _unit(shape)


def _ring(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """Gaussian annulus (radius 1-3", width 0.15-0.45") with azimuthal modulation and knots."""
    radius, width = _u(rng, 1.0, 3.0, n), _u(rng, 0.15, 0.45, n)
    q, phi = _u(rng, 0.6, 1.0, n), _u(rng, 0.0, np.pi, n)
    c, s = np.cos(phi), np.sin(phi)
    xr, yr = c * _X + s * _Y, (-s * _X + c * _Y) / q
    r_ell, theta = np.sqrt(xr * xr + yr * yr), np.arctan2(yr, xr)
    amp, theta0 = _u(rng, 0.0, 0.8, n), _u(rng, 0.0, 2 * np.pi, n)
    shape = np.exp(-0.5 * ((r_ell - radius) / width) ** 2) * (1 + amp * np.cos(theta - theta0))
    for _ in range(3):  # star-forming knots on the ring
        t = _u(rng, 0.0, 2 * np.pi, n)
        kx, ky = radius * np.cos(t), radius * np.sin(t)
        shape += 0.6 * np.exp(-0.5 * ((xr - kx) ** 2 + (yr - ky) ** 2) / (0.6 * width) ** 2)
    blue = rng.uniform(size=n) < 0.6
    g_r = np.where(blue, rng.uniform(0.2, 0.7, n), host["g_r"])
    r_z = np.where(blue, rng.uniform(0.0, 0.5, n), host["r_z"])
    return _bands(
        _unit(shape), host["flux_r"] * mag_to_nmgy(22.5 + rng.uniform(1.0, 3.0, n)), g_r, r_z
    )


def _spiral(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """Exponential disk with Metcalf et al. (2019) log-spiral arms around the LRG bulge."""
    r_h, q, phi = _u(rng, 0.6, 1.6, n), _u(rng, 0.5, 1.0, n), _u(rng, 0.0, np.pi, n)
    c, s = np.cos(phi), np.sin(phi)
    xr, yr = c * _X + s * _Y, (-s * _X + c * _Y) / q
    r, theta = np.sqrt(xr * xr + yr * yr), np.arctan2(yr, xr)
    arms = rng.integers(2, 5, n)[:, None, None].astype(np.float32)
    amp, pitch, phase = _u(rng, 0.3, 0.9, n), _u(rng, 2.0, 6.0, n), _u(rng, 0.0, 2 * np.pi, n)
    wind = arms * theta + pitch * np.log(2 * r / r_h + 1e-3) + phase
    shape = np.exp(-r / r_h) * (1 + amp * np.cos(wind))
    flux = host["flux_r"] * mag_to_nmgy(22.5 + rng.uniform(0.0, 2.0, n))
    return _bands(_unit(shape), flux, rng.uniform(0.4, 0.9, n), rng.uniform(0.2, 0.6, n))


def _edge_on(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """Thin n=1 disk (q 0.08-0.25): centred with a dust lane, or as an offset companion."""
    centred = rng.uniform(size=n) < 0.5
    dist = np.where(centred, 0.0, rng.uniform(1.5, 4.0, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    cx = (dist * np.cos(ang))[:, None, None].astype(np.float32)
    cy = (dist * np.sin(ang))[:, None, None].astype(np.float32)
    reff = np.where(centred, rng.uniform(1.0, 3.0, n), rng.uniform(0.5, 1.5, n))
    q, phi = _u(rng, 0.08, 0.25, n), rng.uniform(0, np.pi, n)[:, None, None].astype(np.float32)
    radius = elliptical_radius(_X - cx, _Y - cy, q, phi)
    shape = sersic_shape(
        radius, reff[:, None, None].astype(np.float32), np.float32(1.0), np.float32(sersic_bn(1.0))
    )
    minor = -np.sin(phi) * (_X - cx) + np.cos(phi) * (_Y - cy)
    lane = 1.0 - 0.6 * centred[:, None, None] * np.exp(-0.5 * (minor / 0.12) ** 2)
    dmag = np.where(centred, rng.uniform(0.0, 1.5, n), rng.uniform(1.0, 3.0, n))
    flux = host["flux_r"] * mag_to_nmgy(22.5 + dmag)
    return _bands(_unit(shape * lane), flux, rng.uniform(0.5, 1.0, n), rng.uniform(0.3, 0.7, n))


def _merger(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """A companion galaxy plus a curved low-surface-brightness tidal tail (arc-like curvature)."""
    comp = _sersic_at(rng, n, 1.2, 3.5, 0.4, 1.2, 0.4, 1.0)
    radius, width = _u(rng, 1.5, 4.0, n), _u(rng, 0.2, 0.5, n)
    span, start = _u(rng, np.pi / 3, 5 * np.pi / 6, n), _u(rng, 0.0, 2 * np.pi, n)
    r = np.sqrt(_X * _X + _Y * _Y)
    along = np.mod(np.arctan2(_Y, _X) - start, 2 * np.pi)
    taper = np.where(along < span, np.sin(np.pi * np.minimum(along / span, 1.0)), 0.0)
    tail = _unit(np.exp(-0.5 * ((r - radius) / width) ** 2) * taper + 1e-12)
    comp_flux = host["flux_r"] * mag_to_nmgy(22.5 + rng.uniform(0.5, 2.5, n))
    tail_flux = host["flux_r"] * mag_to_nmgy(22.5 + rng.uniform(1.5, 3.5, n))
    gr_comp = host["g_r"] - rng.uniform(0.0, 0.5, n)
    return _bands(comp, comp_flux, gr_comp, host["r_z"]) + _bands(
        tail, tail_flux, rng.uniform(0.6, 1.2, n), rng.uniform(0.3, 0.8, n)
    )


def _blue_companion(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """One to three small blue galaxies 1-4" from the core, half of them radially elongated."""
    count = rng.integers(1, 4, n)
    out = np.zeros((n, 3, STAMP_PX, STAMP_PX), np.float32)
    for k in range(3):
        blob = _sersic_at(rng, n, 1.0, 4.0, 0.1, 0.5, 0.3, 1.0, radial_pa=rng.uniform(size=n) < 0.5)
        flux = host["flux_r"] * mag_to_nmgy(22.5 + rng.uniform(1.5, 4.5, n)) * (count > k)
        out += _bands(blob, flux, rng.uniform(0.0, 0.6, n), rng.uniform(-0.1, 0.5, n))
    return out


RENDERERS: dict[str, Callable[[np.random.Generator, int, dict], np.ndarray]] = {
    "ring": _ring,
    "spiral": _spiral,
    "edge_on": _edge_on,
    "merger": _merger,
    "blue_companion": _blue_companion,
}


def render_confusers(
    rng: np.random.Generator, kind: str, flux_r: np.ndarray, g_r: np.ndarray, r_z: np.ndarray
) -> np.ndarray:
    """Extra (pre-PSF) light of ``len(flux_r)`` confusers of one kind.

    Args:
        rng: the chunk's generator.
        kind: one of ``RENDERERS``.
        flux_r: (n,) host r flux in nmgy (sets the feature's brightness scale).
        g_r, r_z: (n,) host colours (rings of host colour, merger companions).

    Returns:
        float32 (n, 3, 64, 64) in nmgy per pixel, bands g, r, z.
    """
    if kind not in RENDERERS:
        raise ValueError(f"unknown confuser kind {kind!r}; expected one of {sorted(RENDERERS)}")
    host = {"flux_r": np.asarray(flux_r), "g_r": np.asarray(g_r), "r_z": np.asarray(r_z)}
    return RENDERERS[kind](rng, len(flux_r), host)
