"""The field population around a lens candidate: galaxies and stars from the real sky's counts.

Field galaxies are drawn at their apparent r magnitude from galaxy number counts, given a redshift
from the magnitude-dependent redshift distribution of magnitude-limited surveys, a type
(star-forming disk or quiescent spheroid), observed g-r and r-z from type-dependent colour tracks,
a stellar mass from the Bell et al. (2003) mass-to-light ratio, and a half-light radius from the
van der Wel et al. (2014) size-mass-redshift relation. They are therefore z ~ 0.1-1 galaxies: at
a given magnitude larger, redder in r-z and less clumpy than the z ~ 1-3 lensed sources
(``reference/science.md`` 2.8, 4.3 item 2). Stars come from high-latitude star counts with a
two-population stellar locus. Everything is pre-PSF light in nmgy per pixel.

Tags as in ``science.md``: [P] published relation (cited), [E] estimate, stated as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from haloscope.preprocess.sim.physics import (
    PIXEL_SCALE,
    STAMP_PX,
    elliptical_radius,
    mag_to_nmgy,
    pixel_grid,
    sersic_bn,
    sersic_shape,
)

__all__ = [
    "FieldGalaxies",
    "FIELD_MAG_RANGE",
    "STAR_MAG_RANGE",
    "galaxy_counts",
    "star_counts",
    "draw_field_galaxies",
    "describe_galaxies",
    "half_light_radius",
    "star_colours",
    "draw_magnitudes",
    "late_type_colours",
    "early_type_colours",
    "kpc_per_arcsec",
    "render_galaxies",
    "render_stars",
    "field_neighbours",
]

F32 = np.float32
# r range of neighbours: bright end of the counts' no-evolution regime (Yasuda et al. 2001);
# faint end ~1 mag below the DR10 r 5-sigma point-source depth (science.md 2.2: 24.1-24.3), where
# a galaxy adds < 0.2 sigma per pixel.
FIELD_MAG_RANGE = (16.0, 25.0)
STAR_MAG_RANGE = (15.0, 24.0)
_STAMP_DEG2 = (STAMP_PX * PIXEL_SCALE / 3600.0) ** 2
_MARGIN_ARCSEC = 2.0  # neighbours centred just off the stamp still shine onto it

# Differential galaxy counts log10 dN/dm [deg^-2 mag^-1] in r: slope 0.33 dex/mag for r > 21
# (science.md 2.8: 0.3-0.4 dex/mag from r 22 to 26), 0.45 for r < 21 (Yasuda et al. 2001, SDSS,
# no-evolution counts 16 < r < 21), 5.0 at r = 24.5 [E]. Cross-check: to r < 24.5 this gives
# 1.4e5 deg^-2, DR10's ~2.8e9 sources over ~2e4 deg^2 (science.md 2.1).
_COUNT_BREAK, _COUNT_AT_BREAK = 21.0, 5.0 - 0.33 * 3.5
_SLOPE_FAINT, _SLOPE_BRIGHT = 0.33, 0.45
# Star counts at |b| 49-64 deg: 2,080 deg^-2 to g < 21 (Chen et al. 2001, SDSS), i.e. ~2,000 to
# r < 20.5 for g-r ~ 0.5; halo-dominated counts flatten to ~0.15 dex/mag (Bahcall & Soneira 1980)
# [E for the slope]. 2,080 = A (10^(0.15*0.5) - 10^(-0.15*6)) / (0.15 ln 10) fixes A at r = 20.
_STAR_SLOPE = 0.15
_STAR_AT_20 = np.log10(2080.0 * _STAR_SLOPE * np.log(10) / (10**0.075 - 10**-0.9))

# Median redshift against r of magnitude-limited samples [P]: SDSS MGS r < 17.77, z_med 0.10
# (Strauss et al. 2002); GAMA r < 19.8, 0.22 (Driver et al. 2011); zCOSMOS i < 22.5 (r ~ 22.9),
# 0.70 (Lilly et al. 2007); VVDS I < 24 (r ~ 24.4), 0.76 (Le Fevre et al. 2005).
_ZMED_R = (17.77, 19.8, 22.9, 24.4)
_ZMED = (0.10, 0.22, 0.70, 0.76)
# Quiescent fraction against r: faint counts are dominated by star-forming galaxies (Ellis 1997,
# ARA&A 35, 389) [E for the numbers].
_RED_FRAC_R, _RED_FRAC = (18.0, 24.0), (0.4, 0.15)

# Observed colour tracks against z [E]: quiescent anchored to the LRG ranges of science.md 2.5
# (g-r 1.2 -> 1.9, r-z 0.7 -> 1.5 over z 0.2 -> 0.7); star-forming from the SDSS blue cloud at
# z ~ 0.1 (g-r ~ 0.45) and the DESI ELG colour box at z 0.6-1.6 (Raichoor et al. 2023: g-r < 0.5
# (r-z) + 0.1, r-z 0.3-1.6), the 4000 A break crossing r near z ~ 0.5 and z near z ~ 1.
_TRACK_Z = (0.0, 0.2, 0.45, 0.7, 1.0, 1.5)
_LATE_GR = (0.45, 0.60, 0.75, 0.55, 0.35, 0.20)
_LATE_RZ = (0.35, 0.45, 0.60, 0.85, 1.00, 0.75)
_EARLY_GR = (0.80, 1.20, 1.65, 1.90, 1.95, 1.95)
_EARLY_RZ = (0.55, 0.70, 1.05, 1.50, 1.85, 2.00)
_COLOUR_SCATTER = 0.12  # mag, each colour [E]

# Rest-frame g-r of the two types (SDSS blue-cloud / red-sequence peaks, Blanton et al. 2003) and
# Bell et al. (2003) log10(M/L_r) = -0.306 + 1.097 (g-r); M_r,sun = 4.65 (Willmer 2018).
_REST_GR_LATE, _REST_GR_EARLY, _MSUN_R = 0.45, 0.75, 4.65
# van der Wel et al. (2014) R_e(semi-major) = A (M/5e10)^alpha (1+z)^beta, kpc; log A at z = 0
# from their z = 0.75 bin (late 0.78, early 0.42) and beta (late -0.75, early -1.48); scatter
# 0.16 / 0.12 dex.
_VDW_LATE = (0.78 + 0.75 * np.log10(1.75), 0.22, -0.75, 0.16)
_VDW_EARLY = (0.42 + 1.48 * np.log10(1.75), 0.75, -1.48, 0.12)
# Intrinsic thickness q0 of disks: ~0.2 on average, thinner for late spirals (Padilla & Strauss
# 2008); the range also spans science.md 4.3's edge-on q 0.08-0.25.
_DISK_THICKNESS = (0.1, 0.25)

# Flat LambdaCDM, H0 = 70, Omega_m = 0.3: comoving distance table for D_L and D_A.
_Z_TAB = np.linspace(0.0, 4.0, 801)
_DC_MPC = np.concatenate(
    [
        [0.0],
        np.cumsum(np.diff(_Z_TAB) * 2997.92458 / 0.7 / np.sqrt(0.3 * (1 + _Z_TAB[1:]) ** 3 + 0.7)),
    ]
)


@dataclass(frozen=True)
class FieldGalaxies:
    """Parameters of field galaxies, (G,) arrays; ``reff_arcsec`` is circularised."""

    mag_r: np.ndarray
    g_r: np.ndarray
    r_z: np.ndarray
    redshift: np.ndarray
    is_late: np.ndarray
    reff_arcsec: np.ndarray
    sersic_n: np.ndarray
    q: np.ndarray
    phi: np.ndarray


def galaxy_counts(mag_r: np.ndarray) -> np.ndarray:
    """Differential galaxy counts dN/dm in deg^-2 mag^-1 at r magnitude ``mag_r``."""
    mag_r = np.asarray(mag_r, np.float64)
    slope = np.where(mag_r > _COUNT_BREAK, _SLOPE_FAINT, _SLOPE_BRIGHT)
    return 10.0 ** (_COUNT_AT_BREAK + slope * (mag_r - _COUNT_BREAK))


def star_counts(mag_r: np.ndarray) -> np.ndarray:
    """Differential star counts dN/dm in deg^-2 mag^-1 at high Galactic latitude."""
    return 10.0 ** (_STAR_AT_20 + _STAR_SLOPE * (np.asarray(mag_r, np.float64) - 20.0))


def _count_table(counts, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Magnitude grid, its normalised cumulative distribution and the total per deg^2."""
    grid = np.linspace(lo, hi, 513)
    dens = counts(grid)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    return grid, cum / cum[-1], float(cum[-1])


def draw_magnitudes(rng: np.random.Generator, num: int, counts, lo: float, hi: float) -> np.ndarray:
    """``num`` r magnitudes in [lo, hi] distributed as ``counts`` (inverse-CDF sampling)."""
    grid, cdf, _ = _count_table(counts, lo, hi)
    return np.interp(rng.uniform(size=num), cdf, grid)


def kpc_per_arcsec(z: np.ndarray) -> np.ndarray:
    """Proper kpc per arcsec at redshift ``z`` (flat LambdaCDM, H0 70, Omega_m 0.3)."""
    d_a = np.interp(z, _Z_TAB, _DC_MPC) / (1.0 + np.asarray(z))
    return d_a * 1e3 * np.pi / (180.0 * 3600.0)


def _distance_modulus(z: np.ndarray) -> np.ndarray:
    d_l = np.interp(z, _Z_TAB, _DC_MPC) * (1.0 + z)
    return 5.0 * np.log10(np.maximum(d_l, 1e-3) * 1e5)


def late_type_colours(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean observed (g-r, r-z) of star-forming galaxies at redshift ``z``."""
    return np.interp(z, _TRACK_Z, _LATE_GR), np.interp(z, _TRACK_Z, _LATE_RZ)


def early_type_colours(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean observed (g-r, r-z) of quiescent galaxies at redshift ``z``."""
    return np.interp(z, _TRACK_Z, _EARLY_GR), np.interp(z, _TRACK_Z, _EARLY_RZ)


def _rest_r_abs_mag(mag_r, r_z, z):
    """Rest-frame M_r: the observed magnitude at lambda_r (1+z), interpolated between r (6400 A)
    and z (9200 A), minus the distance modulus, plus the bandwidth term 2.5 log10(1+z)."""
    frac = np.clip((6400.0 * (1 + z) - 6400.0) / (9200.0 - 6400.0), 0.0, 1.0)
    return mag_r - frac * r_z - _distance_modulus(z) + 2.5 * np.log10(1 + z)


def half_light_radius(rng, mag_r, r_z, z, is_late, q) -> np.ndarray:
    """Circularised R_e in arcsec of galaxies of r magnitude, colour, redshift, type and axis
    ratio: stellar mass from the Bell et al. (2003) M/L, size from van der Wel et al. (2014)."""
    abs_r = _rest_r_abs_mag(mag_r, r_z, z)
    rest_gr = np.where(is_late, _REST_GR_LATE, _REST_GR_EARLY)
    log_mass = -0.4 * (abs_r - _MSUN_R) - 0.306 + 1.097 * rest_gr
    log_a, alpha, beta, scatter = (
        np.where(is_late, late, early) for late, early in zip(_VDW_LATE, _VDW_EARLY, strict=True)
    )
    log_r = log_a + alpha * (log_mass - np.log10(5e10)) + beta * np.log10(1 + z)
    log_r = log_r + scatter * rng.standard_normal(len(z))
    return 10**log_r * np.sqrt(q) / kpc_per_arcsec(z)  # semi-major -> circularised


def _shapes(rng, is_late, min_incl_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Sersic index and axis ratio: inclined thick disks or LensPop spheroids (science.md 2.5)."""
    num = len(is_late)
    # disks: n log-normal about 1 within the van der Wel late-type cut n < 2.5 [E]
    n_late = np.clip(np.exp(rng.normal(0.0, 0.3, num)), 0.5, 2.5)
    cos_i = rng.uniform(0.0, np.cos(np.radians(min_incl_deg)), num)  # isotropic inclinations
    q0 = rng.uniform(*_DISK_THICKNESS, num)
    q_late = np.sqrt(cos_i**2 * (1 - q0**2) + q0**2)
    # spheroids: n 3-6 (science.md 2.5); q = 1 - Rayleigh(0.378 - 0.000572 sigma), sigma 200 km/s
    n_early = rng.uniform(3.0, 6.0, num)
    q_early = np.clip(1.0 - rng.rayleigh(0.378 - 0.000572 * 200.0, num), 0.2, 1.0)
    return np.where(is_late, n_late, n_early), np.where(is_late, q_late, q_early)


def describe_galaxies(
    rng: np.random.Generator,
    mag_r: np.ndarray,
    redshift: np.ndarray,
    is_late: np.ndarray,
    min_incl_deg: float = 0.0,
) -> FieldGalaxies:
    """Colours, shape and size of galaxies of given r magnitude, redshift and type.

    Args:
        rng: generator.
        mag_r, redshift, is_late: (G,) arrays.
        min_incl_deg: smallest disk inclination (80 gives edge-on disks); spheroids ignore it.

    Returns:
        The galaxies' parameters.
    """
    num = len(mag_r)
    z = np.clip(np.asarray(redshift, np.float64), 0.02, 3.0)
    is_late = np.asarray(is_late, bool)
    late, early = late_type_colours(z), early_type_colours(z)
    g_r = np.where(is_late, late[0], early[0]) + _COLOUR_SCATTER * rng.standard_normal(num)
    r_z = np.where(is_late, late[1], early[1]) + _COLOUR_SCATTER * rng.standard_normal(num)
    n, q = _shapes(rng, is_late, min_incl_deg)
    reff = half_light_radius(rng, mag_r, r_z, z, is_late, q)
    phi = rng.uniform(0.0, np.pi, num)
    return FieldGalaxies(np.asarray(mag_r, np.float64), g_r, r_z, z, is_late, reff, n, q, phi)


def draw_field_galaxies(
    rng: np.random.Generator,
    num: int,
    mag_range: tuple[float, float] = FIELD_MAG_RANGE,
    late_only: bool = False,
) -> FieldGalaxies:
    """Draw ``num`` field galaxies from the counts in ``mag_range`` (r, AB).

    Redshifts follow the Smail et al. (1994) form p(z) ~ z^2 exp(-(z/z0)^1.5), z_med = 1.412 z0,
    with the median of magnitude-limited surveys at each r.

    Args:
        rng: generator.
        num: number of galaxies.
        mag_range: r magnitude range.
        late_only: only star-forming disks (blue companions).

    Returns:
        The galaxies' parameters.
    """
    mag = draw_magnitudes(rng, num, galaxy_counts, *mag_range)
    z0 = np.interp(mag, _ZMED_R, _ZMED) / 1.412
    redshift = z0 * rng.gamma(2.0, 1.0, num) ** (2.0 / 3.0)  # u = (z/z0)^1.5 ~ Gamma(2)
    red_frac = np.interp(mag, _RED_FRAC_R, _RED_FRAC)
    is_late = np.ones(num, bool) if late_only else rng.uniform(size=num) >= red_frac
    return describe_galaxies(rng, mag, redshift, is_late)


def _band_fluxes(mag_r: np.ndarray, g_r: np.ndarray, r_z: np.ndarray) -> np.ndarray:
    """(G,) r magnitudes and colours -> (G, 3) g, r, z fluxes in nmgy."""
    return mag_to_nmgy(np.stack([mag_r + g_r, mag_r, mag_r - r_z], axis=1))


def _box_unit_maps(gals: FieldGalaxies, sel: np.ndarray, dx, dy, box: int) -> np.ndarray:
    """Unit-flux (G, box, box) pixel maps centred ``(dx, dy)`` arcsec off the box's centre pixel.

    Sampled at pixel centres: the PSF (FWHM >= 3 px) smooths what 1x sampling misses, as for lens
    light (science.md 2.11). Light beyond the box (> ~4 R_e) is renormalised into it.
    """
    ax = pixel_grid(box, 1, center_px=box // 2).astype(F32)
    col = [np.asarray(a[sel], F32)[:, None, None] for a in (dx, dy)]
    radius = elliptical_radius(
        ax[None, None, :] - col[0],
        ax[None, :, None] - col[1],
        np.asarray(gals.q[sel], F32)[:, None, None],
        np.asarray(gals.phi[sel], F32)[:, None, None],
    )
    n = gals.sersic_n[sel]
    shape = sersic_shape(
        radius,
        np.asarray(gals.reff_arcsec[sel], F32)[:, None, None],
        np.asarray(n, F32)[:, None, None],
        np.asarray(sersic_bn(n), F32)[:, None, None],
    )
    return shape / np.maximum(shape.sum(axis=(1, 2), keepdims=True), F32(1e-30))


def render_galaxies(
    gals: FieldGalaxies, x: np.ndarray, y: np.ndarray, stamp: np.ndarray, num_stamps: int
) -> np.ndarray:
    """Paste galaxies into stamps, pre-PSF.

    Args:
        gals: (G,) galaxies.
        x, y: (G,) centres in arcsec from the stamp centre (pixel 32, 32), anywhere on the sky.
        stamp: (G,) index of the stamp each galaxy belongs to.
        num_stamps: B.

    Returns:
        float32 (B, 3, 64, 64) nmgy per pixel, bands g, r, z.
    """
    # NOTE: float64 sums, galaxy after galaxy in the order below (the bytes of a former
    # bincount over the same weights); off-stamp pixels are not added at all.
    out = np.zeros((num_stamps, 3, STAMP_PX, STAMP_PX))
    ix = np.rint(x / PIXEL_SCALE).astype(np.int64)
    iy = np.rint(y / PIXEL_SCALE).astype(np.int64)
    dx, dy = x - ix * PIXEL_SCALE, y - iy * PIXEL_SCALE
    flux = _band_fluxes(gals.mag_r, gals.g_r, gals.r_z).astype(F32)
    # box sizes hold >= ~4 R_e (a 16-px box is 4.2", for R_e < 0.5")
    size_class = np.digitize(gals.reff_arcsec, (0.5, 1.0))
    for cls, box in enumerate((16, 32, 64)):
        sel = np.flatnonzero(size_class == cls)
        if not len(sel):
            continue
        unit = _box_unit_maps(gals, sel, dx, dy, box)  # (G, box, box)
        weight = unit[:, None] * flux[sel][:, :, None, None]  # (G, 3, box, box) float32
        _add_boxes(out, weight, stamp[sel], iy[sel], ix[sel])
    return out.astype(F32)


def _add_boxes(
    out: np.ndarray, boxes: np.ndarray, stamp: np.ndarray, iy: np.ndarray, ix: np.ndarray
) -> None:
    """Add (G, 3, box, box) maps, centred on pixel ``(32 + iy, 32 + ix)``, onto ``out[stamp]``.

    The part of each box off the stamp is dropped; one slice per galaxy (a few per stamp).
    """
    box = boxes.shape[-1]
    y0 = (iy + STAMP_PX // 2 - box // 2).tolist()
    x0 = (ix + STAMP_PX // 2 - box // 2).tolist()
    for g, (s, ty, tx) in enumerate(zip(stamp.tolist(), y0, x0, strict=True)):
        ly, hy = max(ty, 0), min(ty + box, STAMP_PX)
        lx, hx = max(tx, 0), min(tx + box, STAMP_PX)
        if hy > ly and hx > lx:
            out[s, :, ly:hy, lx:hx] += boxes[g, :, ly - ty : hy - ty, lx - tx : hx - tx]


def star_colours(rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Stellar locus at high latitude [E]: half halo turn-off stars (g-r ~ 0.35) and half disk M
    dwarfs (g-r ~ 1.4), the two peaks of Juric et al. (2008); r-z along the Covey et al. (2007)
    locus (Sun: g-r 0.44, r-z 0.14; K5: 1.1, 0.6), M dwarfs r-z 0.8-2.2."""
    dwarf = rng.uniform(size=num) < 0.5
    g_r = np.where(dwarf, rng.normal(1.40, 0.08, num), np.maximum(rng.normal(0.35, 0.1, num), 0.1))
    r_z = np.where(dwarf, rng.uniform(0.8, 2.2, num), 0.65 * g_r - 0.15)
    return g_r, r_z


def render_stars(
    rng: np.random.Generator, mag_r: np.ndarray, x: np.ndarray, y: np.ndarray, stamp, num_stamps
) -> np.ndarray:
    """Point sources (all pre-PSF flux in the pixel holding the star), (B, 3, 64, 64) nmgy."""
    out = np.zeros((num_stamps, 3, STAMP_PX, STAMP_PX), F32)
    g_r, r_z = star_colours(rng, len(mag_r))
    ix = np.rint(x / PIXEL_SCALE).astype(np.int64) + STAMP_PX // 2
    iy = np.rint(y / PIXEL_SCALE).astype(np.int64) + STAMP_PX // 2
    ok = (ix >= 0) & (ix < STAMP_PX) & (iy >= 0) & (iy < STAMP_PX)
    flux = _band_fluxes(mag_r, g_r, r_z).astype(F32)
    for band in range(3):
        np.add.at(out, (stamp[ok], band, iy[ok], ix[ok]), flux[ok, band])
    return out


def _scatter(rng: np.random.Generator, mean: float, num: int):
    """Poisson numbers per stamp, uniform positions over the stamp plus margin, owner index."""
    count = rng.poisson(mean, num)
    stamp = np.repeat(np.arange(num), count)
    half = STAMP_PX * PIXEL_SCALE / 2 + _MARGIN_ARCSEC
    x, y = rng.uniform(-half, half, (2, len(stamp)))
    return stamp, x, y


def field_neighbours(rng: np.random.Generator, num: int) -> np.ndarray:
    """Field galaxies and stars on ``num`` stamps from the counts, pre-PSF.

    Galaxies (``FIELD_MAG_RANGE``, ~6 per stamp with its margin) and stars (``STAR_MAG_RANGE``,
    ~0.2 per stamp) are Poisson in number and uniform in position, as unclustered field objects.

    Returns:
        float32 (num, 3, 64, 64) nmgy per pixel, bands g, r, z.
    """
    area = ((STAMP_PX * PIXEL_SCALE + 2 * _MARGIN_ARCSEC) / 3600.0) ** 2
    gal_total = _count_table(galaxy_counts, *FIELD_MAG_RANGE)[2]
    stamp, x, y = _scatter(rng, gal_total * area, num)
    out = render_galaxies(draw_field_galaxies(rng, len(stamp)), x, y, stamp, num)
    star_total = _count_table(star_counts, *STAR_MAG_RANGE)[2]
    stamp, x, y = _scatter(rng, star_total * area, num)
    mags = draw_magnitudes(rng, len(stamp), star_counts, *STAR_MAG_RANGE)
    return out + render_stars(rng, mags, x, y, stamp, num)
