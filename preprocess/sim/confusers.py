"""Lens-like control galaxies (confusers), drawn from the real sky rather than the lens recipe.

Recipes follow ``reference/science.md`` 4.2-4.3. Each renderer returns the extra light that is
added to an ordinary LRG control *before* PSF convolution and noise, so confusers share the
lens-light, PSF and depth distributions of every other row (no survey-property shortcut). The LRG
acts as the bulge of a spiral, ring or edge-on disk, or as one galaxy of a merger. Disks take their
colours and sizes from the field population (``field``) at the host's redshift, read from its
g-r; companions are field galaxies drawn from the counts, never copies of the lensed-source model.

Light added, r band (``added_flux_bounds`` holds the same numbers):

* ``spiral``: disk + Metcalf et al. (2019) log-spiral arms; disk/bulge (1 - B/T)/(B/T), B/T 0.1-0.5;
* ``ring``: a star-forming ring holding 10-30% of a B/T 0.3-0.6 disk (0.07-0.7 x host);
* ``edge_on``: a centred edge-on disk (B/T 0.3-0.6), or an edge-on field disk of r 19-23 at 1.5-4";
* ``merger``: a 1:1-1:4 companion at 5-20 kpc plus a tidal tail of 3-15% of the pair's light;
* ``blue_companion``: 1-3 star-forming field galaxies of r 20-24 at 1-4";
* ``star_blend``: a star of r 16-23 at 0.3-2.5".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from haloscope.preprocess.sim.field import (
    FieldGalaxies,
    describe_galaxies,
    draw_field_galaxies,
    draw_magnitudes,
    half_light_radius,
    kpc_per_arcsec,
    late_type_colours,
    render_galaxies,
    render_stars,
    star_counts,
)
from haloscope.preprocess.sim.physics import (
    STAMP_PX,
    bin_image,
    mag_to_nmgy,
    pixel_grid,
)

__all__ = ["render_confusers", "added_flux_bounds", "RENDERERS"]

_OVERSAMPLE = 2
_AX = pixel_grid(STAMP_PX, _OVERSAMPLE).astype(np.float32)
_X = _AX[None, None, :]  # (1, 1, 128) arcsec
_Y = _AX[None, :, None]  # (1, 128, 1)
# Bulge-to-total ratios: Sa ~0.5 to Sc ~0.1 (Simien & de Vaucouleurs 1986); rings and S0/Sa
# edge-on disks are early-type disks (Buta & Combes 1996), B/T 0.3-0.6.
_BT_SPIRAL, _BT_EARLY_DISK = (0.1, 0.5), (0.3, 0.6)
_RING_SHARE = (0.1, 0.3)  # [E] share of the disk's light in the ring
_MERGER_RATIO = (0.25, 1.0)  # major mergers, 1:4-1:1 (Lotz et al. 2011)
_PAIR_KPC = (5.0, 20.0)  # close-pair projected separations (Patton et al. 2000)
_TAIL_SHARE = (0.03, 0.15)  # [E] tidal features hold a few % of the light (Ji et al. 2014)
_COMPANION_MAG, _COMPANION_ARCSEC = (20.0, 24.0), (1.0, 4.0)  # science.md 4.3 item 2, 2.2 depth
_EDGE_MAG, _EDGE_ARCSEC = (19.0, 23.0), (1.5, 4.0)
_STAR_MAG, _STAR_ARCSEC = (16.0, 23.0), (0.3, 2.5)  # [E] unsaturated; within ~2 PSF FWHM


def _u(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return rng.uniform(lo, hi, n)[:, None, None].astype(np.float32)


def _c(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32)[:, None, None]


def _unit(shape: np.ndarray) -> np.ndarray:
    """Normalise (n, 128, 128) fine maps to unit total flux and bin to (n, 64, 64) pixels."""
    pix = bin_image(shape, _OVERSAMPLE)
    return pix / np.maximum(pix.sum(axis=(1, 2), keepdims=True), 1e-30)


def _bands(unit_img: np.ndarray, flux_r: np.ndarray, g_r, r_z) -> np.ndarray:
    """(n, 64, 64) unit map + r flux and colours -> (n, 3, 64, 64) nmgy per pixel."""
    scale = np.stack([10 ** (-0.4 * g_r), np.ones_like(g_r), 10 ** (0.4 * r_z)], axis=1)
    return (unit_img[:, None] * (flux_r[:, None] * scale)[:, :, None, None]).astype(np.float32)


def _host_redshift(host: dict) -> np.ndarray:
    """LRG redshift from its g-r: 1.2 -> 1.9 over z 0.2 -> 0.7 (science.md 2.5)."""
    return np.interp(host["g_r"], (1.2, 1.9), (0.2, 0.7))


def _disk(rng, host: dict, bt_range, min_incl_deg: float, max_incl_deg: float):
    """Disk around the LRG bulge: r flux, colours and R_e of a field disk at the host's z."""
    n = len(host["flux_r"])
    bt = rng.uniform(*bt_range, n)
    flux = host["flux_r"] * (1 - bt) / bt
    z = _host_redshift(host)
    cos_i = rng.uniform(np.cos(np.radians(max_incl_deg)), np.cos(np.radians(min_incl_deg)), n)
    q0 = rng.uniform(0.1, 0.25, n)  # disk thickness, as field.py (Padilla & Strauss 2008)
    q = np.sqrt(cos_i**2 * (1 - q0**2) + q0**2)
    g_r, r_z = (c + 0.12 * rng.standard_normal(n) for c in late_type_colours(z))
    mag = 22.5 - 2.5 * np.log10(flux)
    reff = half_light_radius(rng, mag, r_z, z, np.ones(n, bool), q)
    return flux, g_r, r_z, reff, q


def _disk_polar(rng, n: int, q: np.ndarray, dx=0.0, dy=0.0):
    """In-plane radius and azimuth of an inclined disk at a random PA on the fine grid."""
    phi = _u(rng, 0.0, np.pi, n)
    c, s = np.cos(phi), np.sin(phi)
    x, y = _X - dx, _Y - dy
    xr, yr = c * x + s * y, (-s * x + c * y) / _c(q)
    return np.sqrt(xr * xr + yr * yr), np.arctan2(yr, xr), (xr, yr)


def _spiral(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """Exponential disk with Metcalf et al. (2019) log-spiral arms around the LRG bulge."""
    flux, g_r, r_z, reff, q = _disk(rng, host, _BT_SPIRAL, 0.0, 60.0)  # arms seen at i < 60 [E]
    r, theta, _ = _disk_polar(rng, n, q)
    r_h = _c(reff / 1.678)  # exponential scale length
    arms = rng.integers(2, 5, n)[:, None, None].astype(np.float32)  # science.md 4.3 item 4
    amp, pitch, phase = _u(rng, 0.3, 0.9, n), _u(rng, 2.0, 6.0, n), _u(rng, 0.0, 2 * np.pi, n)
    wind = arms * theta + pitch * np.log(2 * r / r_h + 1e-3) + phase
    return _bands(_unit(np.exp(-r / r_h) * (1 + amp * np.cos(wind))), flux, g_r, r_z)


def _ring(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """Gaussian annulus (radius 1-3", width 0.2-0.6") with azimuthal modulation and knots;
    30% collisional, off-centre by up to 0.3 ring radii [E] (science.md 4.3 item 3)."""
    disk_flux, g_disk, r_z_disk, _, q = _disk(rng, host, _BT_EARLY_DISK, 0.0, 60.0)
    radius, width = _u(rng, 1.0, 3.0, n), _u(rng, 0.2, 0.6, n)
    off = (rng.uniform(size=n) < 0.3) * rng.uniform(0.0, 0.3, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    dx, dy = _c(off * np.cos(ang)) * radius, _c(off * np.sin(ang)) * radius
    r_ell, theta, (xr, yr) = _disk_polar(rng, n, q, dx, dy)
    amp, theta0 = _u(rng, 0.0, 0.8, n), _u(rng, 0.0, 2 * np.pi, n)
    shape = np.exp(-0.5 * ((r_ell - radius) / width) ** 2) * (1 + amp * np.cos(theta - theta0))
    for _ in range(3):  # star-forming knots on the ring
        t = _u(rng, 0.0, 2 * np.pi, n)
        kx, ky = radius * np.cos(t), radius * np.sin(t)
        shape += 0.6 * np.exp(-0.5 * ((xr - kx) ** 2 + (yr - ky) ** 2) / (0.6 * width) ** 2)
    blue = rng.uniform(size=n) < 0.6  # [E] star-forming, else the host's population
    g_r = np.where(blue, g_disk, host["g_r"])
    r_z = np.where(blue, r_z_disk, host["r_z"])
    return _bands(_unit(shape), disk_flux * rng.uniform(*_RING_SHARE, n), g_r, r_z)


def _offsets(rng: np.random.Generator, n: int, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    dist, ang = rng.uniform(lo, hi, n), rng.uniform(0, 2 * np.pi, n)
    return dist * np.cos(ang), dist * np.sin(ang)


def _edge_on_disk(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """An edge-on disk (i 80-90 deg, B/T 0.3-0.6) around the LRG, with a dust lane."""
    flux, g_r, r_z, reff, q = _disk(rng, host, _BT_EARLY_DISK, 80.0, 90.0)
    _, _, (xr, yr) = _disk_polar(rng, n, q)
    radius = np.sqrt(xr * xr * _c(q) + yr * yr * _c(q))  # product-average radius
    lane = 1.0 - 0.6 * np.exp(-0.5 * (yr * _c(q) / 0.12) ** 2)  # [E] depth 0.6, sigma 0.12"
    # inclination reddening of edge-on disks, ~0.15 mag in g-r (Maller et al. 2009) [E]
    shape = np.exp(-1.678 * radius / _c(reff)) * lane
    return _bands(_unit(shape), flux, g_r + 0.15, r_z + 0.1)


def _edge_on_companion(rng: np.random.Generator, n: int) -> np.ndarray:
    """An edge-on star-forming field galaxy of r 19-23 from the counts, 1.5-4" away."""
    field = draw_field_galaxies(rng, n, _EDGE_MAG, late_only=True)
    gals = describe_galaxies(rng, field.mag_r, field.redshift, field.is_late, min_incl_deg=80.0)
    x, y = _offsets(rng, n, *_EDGE_ARCSEC)
    return render_galaxies(gals, x, y, np.arange(n), n)


def _edge_on(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """Half centred edge-on disks, half edge-on companions (science.md 4.3 item 5)."""
    centred = rng.uniform(size=n) < 0.5
    out = np.zeros((n, 3, STAMP_PX, STAMP_PX), np.float32)
    idx = np.flatnonzero(centred)
    out[idx] = _edge_on_disk(rng, len(idx), {k: v[idx] for k, v in host.items()})
    idx = np.flatnonzero(~centred)
    out[idx] = _edge_on_companion(rng, len(idx))
    return out


def _merger(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """A companion at the host's redshift plus a curved low-surface-brightness tidal tail."""
    z = _host_redshift(host)
    ratio = rng.uniform(*_MERGER_RATIO, n)
    comp_mag = 22.5 - 2.5 * np.log10(host["flux_r"] * ratio)
    comp = describe_galaxies(rng, comp_mag, z, rng.uniform(size=n) < 0.5)  # [E] half disks
    sep = rng.uniform(*_PAIR_KPC, n) / kpc_per_arcsec(z)
    ang = rng.uniform(0, 2 * np.pi, n)
    out = render_galaxies(comp, sep * np.cos(ang), sep * np.sin(ang), np.arange(n), n)
    # tail: an arc about the host through the companion's side, radius 1-2 separations [E]
    radius, width = _c(sep * rng.uniform(1.0, 2.0, n)), _u(rng, 0.2, 0.5, n)
    span, start = _u(rng, np.pi / 3, 5 * np.pi / 6, n), _c(ang) - _u(rng, 0.0, np.pi / 3, n)
    r = np.sqrt(_X * _X + _Y * _Y)
    along = np.mod(np.arctan2(_Y, _X) - start, 2 * np.pi)
    taper = np.where(along < span, np.sin(np.pi * np.minimum(along / span, 1.0)), 0.0)
    tail = _unit(np.exp(-0.5 * ((r - radius) / width) ** 2) * taper + 1e-12)
    tail_flux = host["flux_r"] * (1 + ratio) * rng.uniform(*_TAIL_SHARE, n)
    g_r, r_z = 0.5 * (host["g_r"] + comp.g_r), 0.5 * (host["r_z"] + comp.r_z)  # mixed stars
    return out + _bands(tail, tail_flux, g_r, r_z)


def _blue_companion(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """One to three star-forming field galaxies (r 20-24 from the counts) 1-4" from the core."""
    count = rng.integers(1, 4, n)
    stamp = np.repeat(np.arange(n), count)
    gals: FieldGalaxies = draw_field_galaxies(rng, len(stamp), _COMPANION_MAG, late_only=True)
    x, y = _offsets(rng, len(stamp), *_COMPANION_ARCSEC)
    return render_galaxies(gals, x, y, stamp, n)


def _star_blend(rng: np.random.Generator, n: int, host: dict) -> np.ndarray:
    """A star from the high-latitude counts (r 16-23) 0.3-2.5" from the LRG core."""
    x, y = _offsets(rng, n, *_STAR_ARCSEC)
    mags = draw_magnitudes(rng, n, star_counts, *_STAR_MAG)
    return render_stars(rng, mags, x, y, np.arange(n), n)


RENDERERS: dict[str, Callable[[np.random.Generator, int, dict], np.ndarray]] = {
    "ring": _ring,
    "spiral": _spiral,
    "edge_on": _edge_on,
    "merger": _merger,
    "blue_companion": _blue_companion,
    "star_blend": _star_blend,
}


def added_flux_bounds(kind: str, flux_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Documented (min, max) total r flux in nmgy a confuser of ``kind`` adds to a host of
    r flux ``flux_r`` (before any light falls off the stamp)."""
    host = np.asarray(flux_r, np.float64)
    d_over_b = [(1 - hi) / hi for hi in (_BT_SPIRAL[1], _BT_EARLY_DISK[1])]
    d_over_b_max = [(1 - lo) / lo for lo in (_BT_SPIRAL[0], _BT_EARLY_DISK[0])]
    sky = {"blue_companion": _COMPANION_MAG, "star_blend": _STAR_MAG}
    if kind in sky:
        faint, bright = mag_to_nmgy(sky[kind][1]), mag_to_nmgy(sky[kind][0])
        most = 3 if kind == "blue_companion" else 1
        return np.full_like(host, faint), np.full_like(host, most * bright)
    rel = {
        "spiral": (d_over_b[0], d_over_b_max[0]),
        "ring": (_RING_SHARE[0] * d_over_b[1], _RING_SHARE[1] * d_over_b_max[1]),
        "merger": (
            _MERGER_RATIO[0] * (1 + _TAIL_SHARE[0]) + _TAIL_SHARE[0],
            _MERGER_RATIO[1] + _TAIL_SHARE[1] * (1 + _MERGER_RATIO[1]),
        ),
    }
    if kind == "edge_on":
        lo = np.minimum(host * d_over_b[1], mag_to_nmgy(_EDGE_MAG[1]))
        return lo, np.maximum(host * d_over_b_max[1], mag_to_nmgy(_EDGE_MAG[0]))
    if kind not in rel:
        raise ValueError(f"unknown confuser kind {kind!r}; expected one of {sorted(RENDERERS)}")
    return host * rel[kind][0], host * rel[kind][1]


def render_confusers(
    rng: np.random.Generator, kind: str, flux_r: np.ndarray, g_r: np.ndarray, r_z: np.ndarray
) -> np.ndarray:
    """Extra (pre-PSF) light of ``len(flux_r)`` confusers of one kind.

    Args:
        rng: the chunk's generator.
        kind: one of ``RENDERERS``.
        flux_r: (n,) host r flux in nmgy (sets the brightness of disks, rings and mergers).
        g_r, r_z: (n,) host colours (host redshift, host-coloured rings, merger tails).

    Returns:
        float32 (n, 3, 64, 64) in nmgy per pixel, bands g, r, z.
    """
    if kind not in RENDERERS:
        raise ValueError(f"unknown confuser kind {kind!r}; expected one of {sorted(RENDERERS)}")
    host = {"flux_r": np.asarray(flux_r), "g_r": np.asarray(g_r), "r_z": np.asarray(r_z)}
    return RENDERERS[kind](rng, len(flux_r), host).astype(np.float32)
