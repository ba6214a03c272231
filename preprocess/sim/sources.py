"""The lensed-source population: number counts, sizes, clumpy morphology and source-plane position.

A positive is a source that a flux-limited survey would see as a strong lens, drawn jointly with
its position ``beta`` behind an SIE + shear lens (``reference/science.md`` sections 2.8-2.10):

* intrinsic r magnitudes follow galaxy number counts, ``dN/dm ~ 10^(0.35 m)`` on r 22-26.5
  (section 2.8: counts rise 0.3-0.4 dex per mag from r 22 to 26; section 2.11: r 22-26.5),
  redshifts U(1, 3) (section 2.8);
* the system is in the sample when a survey could find it as a lens, LensPop's criteria
  (section 2.9): total magnification ``mu > 3``, a resolved arc ``mu R_e > FWHM``, and a lensed
  r no fainter than ``LIMIT_BELOW_DEPTH`` above the brick's 5-sigma depth (LensPop S/N 5-8.5 at
  DECaLS depth, section 2.10; LensPop's own S/N > 20 would leave no sub-threshold lenses and its
  seeing test would drop the theta_E < FWHM range the strata need). The joint density
  ``p(m, R_e, beta) ~ n(m) p(R_e | m) [mu(beta) >= mu_required(m, R_e)]`` is sampled exactly:
  ``(m, R_e)`` by rejection on the lensing cross-section they need, then ``beta`` uniform in
  area inside that cross-section. This *is* the magnification bias (``mu^(2.5 * 0.35)`` below
  the counts' faint end); nothing is solved for a target S/N and nothing is clipped;
* ``mu(beta)`` comes from a map per lens: an image-plane grid ray-traced to the source plane and
  binned (the binned density of mapped points is the total point-source magnification), then
  smoothed by a Gaussian of the source's size (finite-source magnification);
* sizes from LensPop's size-luminosity relation with 0.35 dex scatter (section 2.8), truncated
  to R_e 0.08-1.2" (section 2.11); Sersic n U(0.5, 1.5), q U(0.3, 1), blue colours; 2-6
  Gaussian star-forming clumps that carry 10-30% of the flux, lie in the disk plane and are
  bluer than the diffuse light (sections 2.8, 2.11).

Near-miss controls (``draw_near_miss_sources``) use the same source model behind the same kind of
lens, placed just outside the multiply-imaged region (outside the cut and the caustics): one
weakly distorted, modestly magnified image and no counter-image.

Everything works in Einstein-radius units where it can (SIE and shear deflections scale with
``theta_E``), so one map grid serves every lens.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaincinv, ndtr, ndtri

from haloscope.preprocess.sim.physics import (
    lens_eigenvalues,
    sersic_bn,
    shear_deflection,
    sie_deflection,
)

__all__ = [
    "MAX_KNOTS",
    "MU_MIN",
    "SRC_MAG_RANGE",
    "REFF_RANGE",
    "draw_sources",
    "draw_near_miss_sources",
    "multiple_image_radius",
    "magnification_maps",
    "source_extent",
    "luminosity_distance_mpc",
]

MAX_KNOTS = 6
COUNT_SLOPE = 0.35  # dex per magnitude, science.md 2.8
SRC_MAG_RANGE = (22.0, 26.5)  # intrinsic r, science.md 2.11
SRC_Z_RANGE = (1.0, 3.0)  # science.md 2.8
MU_MIN = 3.0  # LensPop detectability: magnification > 3 (science.md 2.9)
# The sample's lensed-flux limit, in magnitudes brighter than the brick's r 5-sigma point-source
# depth: at DECaLS depth (24.2) lensed r 23.0, where science.md 2.10 gives LensPop S/N 5-8.5,
# the lower edge of its recommended mass "at 8-60". Fainter lenses are in no sample this survey
# could build, so the source counts are cut there, not at the 5-sigma point-source flux.
LIMIT_BELOW_DEPTH = 1.2
SIZE_SCATTER_DEX = 0.35  # LensPop size-luminosity scatter (science.md 2.8)
REFF_RANGE = (0.08, 1.2)  # arcsec, science.md 2.11 ("~0.1-1.2")
KNOT_FRAC = (0.1, 0.3)  # clumps' share of the flux, science.md 2.8
_H0, _OMEGA_M, _C_KMS = 70.0, 0.3, 299792.458

# Magnification maps, in Einstein-radius units: the image plane +-2.6 theta_E holds every image
# of a source within 1.3 theta_E (|theta| <= (|beta| + alpha_max) / (1 - gamma) with
# alpha_max <= 1.08 for q >= 0.5 and gamma <= 0.08), sampled 2x finer than the source map.
MAP_PX, MAP_HALF = 24, 1.3
IMG_PX, IMG_HALF = 96, 2.6
SMOOTH_LEVELS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6)  # Gaussian sigma of the source / theta_E
_MAX_ROUNDS = 200
# Near misses: polar image-plane grid whose negative-parity points outline the multiply-imaged
# region (every multiple-image system has a saddle image; the tangential critical curve of an SIE
# with q >= 0.5 and shear <= 0.08 lies within 1.6 theta_E (tested)). Radii are uniform, so the
# source-plane sampling stays dense next to the cut, where the SIE compresses the centre.
_NM_RADII = np.linspace(0.004, 1.8, 100)
_NM_ANGLES = np.linspace(0.0, 2 * np.pi, 240, endpoint=False)
_NM_BINS = 120  # source-plane azimuth bins of the boundary
# [E] gap between the boundary and the source centre, in theta_E, on top of 2 R_e (so the
# source's light stays outside); 1.05-1.4 theta_E from the centre for a compact source, where
# an isothermal lens magnifies a single image 1.7-2x
_NM_GAP = (0.05, 0.4)
_NM_MU = 1.5  # [E] typical magnification of a near miss, for its flux limit
_NM_MU_MAX, _NM_MU_ROUNDS = 1.9, 20  # weak: push sources next to a cusp out until mu <= 1.9

_Z_GRID = np.linspace(0.0, 4.0, 801)


def _comoving_mpc() -> np.ndarray:
    """Comoving distance on ``_Z_GRID`` for flat LCDM (H0 70, Omega_m 0.3)."""
    inv_e = 1.0 / np.sqrt(_OMEGA_M * (1 + _Z_GRID) ** 3 + 1 - _OMEGA_M)
    steps = 0.5 * (inv_e[1:] + inv_e[:-1]) * np.diff(_Z_GRID)
    return _C_KMS / _H0 * np.concatenate([[0.0], np.cumsum(steps)])


_DC_MPC = _comoving_mpc()


def luminosity_distance_mpc(z: np.ndarray) -> np.ndarray:
    """Luminosity distance in Mpc (flat LCDM, H0 70, Omega_m 0.3), z in [0, 4]."""
    return np.interp(z, _Z_GRID, _DC_MPC) * (1 + np.asarray(z))


def _reff_median_arcsec(mag_r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """LensPop ``RofMz``: r[kpc] = 10^(-(M+18)/4) ((1+z)/1.6)^-1.2, as an angle.

    M is the absolute magnitude with the K-correction of a flat-f_nu (blue, star-forming)
    spectrum, ``K = -2.5 log10(1+z)``.
    """
    d_l = luminosity_distance_mpc(z)
    abs_mag = mag_r - 5 * np.log10(d_l * 1e5) + 2.5 * np.log10(1 + z)
    r_kpc = 10 ** (-(abs_mag + 18) / 4) * ((1 + z) / 1.6) ** -1.2
    kpc_per_arcsec = d_l / (1 + z) ** 2 * 1e3 * math.pi / (180 * 3600)
    return r_kpc / kpc_per_arcsec


def _draw_reff(rng: np.random.Generator, mag_r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lognormal scatter about the LensPop median, truncated (not clipped) to ``REFF_RANGE``."""
    med = np.log10(_reff_median_arcsec(mag_r, z))
    lo = ndtr((np.log10(REFF_RANGE[0]) - med) / SIZE_SCATTER_DEX)
    hi = ndtr((np.log10(REFF_RANGE[1]) - med) / SIZE_SCATTER_DEX)
    u = np.clip(lo + (hi - lo) * rng.uniform(size=len(mag_r)), 1e-12, 1 - 1e-12)
    return 10 ** (med + SIZE_SCATTER_DEX * ndtri(u))


def _draw_counts_mag(rng: np.random.Generator, num: int) -> np.ndarray:
    """Magnitudes with ``dN/dm ~ 10^(COUNT_SLOPE m)`` on ``SRC_MAG_RANGE`` (inverse CDF)."""
    k = COUNT_SLOPE * math.log(10.0)
    lo, hi = SRC_MAG_RANGE
    u = rng.uniform(size=num)
    return hi + np.log(u + (1 - u) * math.exp(-k * (hi - lo))) / k


def _smoothing_matrices() -> np.ndarray:
    """(levels, M, M) 1-D Gaussian blur matrices on the source map (zero outside the map)."""
    h = 2 * MAP_HALF / MAP_PX
    c = (np.arange(MAP_PX) + 0.5) * h - MAP_HALF
    mats = []
    for sigma in SMOOTH_LEVELS:
        if sigma == 0.0:
            mats.append(np.eye(MAP_PX))
            continue
        d = c[:, None] - c[None, :]
        mats.append(np.exp(-0.5 * (d / sigma) ** 2) * h / (math.sqrt(2 * math.pi) * sigma))
    return np.stack(mats).astype(np.float32)


_BLUR = _smoothing_matrices()


def magnification_maps(
    q: np.ndarray, phi: np.ndarray, gamma1: np.ndarray, gamma2: np.ndarray
) -> np.ndarray:
    """Total magnification over the source plane, per lens and source-size level.

    The map covers ``|beta| <= MAP_HALF`` theta_E in ``MAP_PX`` pixels. Each image-plane grid
    point carries its cell area to the source pixel it maps to, so a source pixel collects
    ``sum_i |mu_i|`` times its own area; dividing by that area gives the point-source total
    magnification averaged over the pixel. Blurring with the source's Gaussian gives the
    magnification of a source of that size.

    Args:
        q, phi: (L,) SIE axis ratio and position angle.
        gamma1, gamma2: (L,) external shear.

    Returns:
        float32 (L, len(SMOOTH_LEVELS), MAP_PX, MAP_PX).
    """
    num = len(q)
    # beta(-theta) = -beta(theta) for SIE + shear, so the lower half of the image plane is
    # traced and its points are also binned mirrored (the map is symmetric about beta = 0)
    g = ((np.arange(IMG_PX, dtype=np.float32) + 0.5) / IMG_PX * 2 - 1) * IMG_HALF
    x, y = g[None, None, :], g[None, : IMG_PX // 2, None]
    c3 = lambda a: np.asarray(a, np.float32)[:, None, None]  # noqa: E731
    ax, ay = sie_deflection(x, y, np.ones((num, 1, 1)), c3(q), c3(phi))
    sx, sy = shear_deflection(x, y, c3(gamma1), c3(gamma2))
    scale = MAP_PX / (2 * MAP_HALF)
    ix = np.floor((x - ax - sx + MAP_HALF) * scale).astype(np.int64)
    iy = np.floor((y - ay - sy + MAP_HALF) * scale).astype(np.int64)
    inside = (ix >= 0) & (ix < MAP_PX) & (iy >= 0) & (iy < MAP_PX)
    flat = (np.arange(num)[:, None, None] * MAP_PX + iy) * MAP_PX + ix
    counts = np.bincount(flat[inside], minlength=num * MAP_PX * MAP_PX)
    counts = counts.reshape(num, MAP_PX, MAP_PX)
    counts = counts + counts[:, ::-1, ::-1]
    cell_ratio = (2 * IMG_HALF / IMG_PX) ** 2 * scale**2  # image cell area / source pixel area
    mu = (counts * cell_ratio).astype(np.float32)
    blurred = _BLUR[None] @ mu[:, None]  # (L, levels, M, M): rows, then columns
    return blurred @ np.swapaxes(_BLUR, 1, 2)[None]


def _level_of(reff_arcsec: np.ndarray, theta_e: np.ndarray) -> np.ndarray:
    """Index of the smoothing level closest to the source's Gaussian sigma (R_e / 1.177)."""
    sigma = reff_arcsec / 1.1774 / theta_e
    levels = np.array([0.05, *SMOOTH_LEVELS[1:]])  # level 0: below the map's pixel
    return np.argmin(np.abs(np.log(sigma[:, None] / levels[None, :])), axis=1)


def _mu_required(
    mag_r: np.ndarray, reff: np.ndarray, depth_r: np.ndarray, fwhm_r: np.ndarray
) -> np.ndarray:
    """Least magnification that puts a source in the sample (LensPop, science.md 2.9).

    ``mu > 3``; the arc resolved, ``mu R_e > FWHM`` (its tangential length exceeds the PSF);
    and the lensed source above the sample's flux limit (``LIMIT_BELOW_DEPTH``).
    """
    flux_mu = 10 ** (0.4 * (mag_r - depth_r + LIMIT_BELOW_DEPTH))
    return np.maximum(np.maximum(MU_MIN, fwhm_r / reff), flux_mu)


def _accept_sources(
    rng: np.random.Generator, maps: np.ndarray, theta_e: np.ndarray, sky: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Rejection-sample (m, z, R_e) per lens with acceptance = its cross-section / the largest.

    Returns:
        ``mag``, ``z``, ``reff``, ``level`` and ``mu_req`` per lens.
    """
    num = len(theta_e)
    area = maps >= MU_MIN
    area_max = np.maximum(area.mean(axis=(2, 3)).max(axis=1), 1e-9)
    out = {k: np.zeros(num) for k in ("mag", "z", "reff", "mu_req")}
    out["level"] = np.zeros(num, np.int64)
    todo = np.arange(num)
    for round_index in range(_MAX_ROUNDS):
        if len(todo) == 0:
            break
        mag = _draw_counts_mag(rng, len(todo))
        z = rng.uniform(*SRC_Z_RANGE, len(todo))
        reff = _draw_reff(rng, mag, z)
        level = _level_of(reff, theta_e[todo])
        mu_req = _mu_required(mag, reff, sky["depth_r"][todo], sky["fwhm_r"][todo])
        frac = (maps[todo, level] >= mu_req[:, None, None]).mean(axis=(1, 2))
        accept = rng.uniform(size=len(todo)) * area_max[todo] < frac
        # NOTE: the last round keeps every candidate, so a lens always gets a source
        keep = accept | (round_index == _MAX_ROUNDS - 1)
        for key, val in (("mag", mag), ("z", z), ("reff", reff), ("level", level)):
            out[key][todo[keep]] = val[keep]
        out["mu_req"][todo[keep]] = mu_req[keep]
        todo = todo[~keep]
    return out


def _place(
    rng: np.random.Generator, maps: np.ndarray, src: dict, theta_e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two source positions per lens, uniform in area where ``mu >= mu_req`` (arcsec).

    Returns:
        ``beta_x``, ``beta_y`` and the map's magnification there, each (L, 2).
    """
    num = len(theta_e)
    mu = maps[np.arange(num), src["level"]].reshape(num, MAP_PX * MAP_PX)
    ok = mu >= src["mu_req"][:, None]
    ok[~ok.any(axis=1), :] = False  # forced candidates: fall back to the peak pixel
    ok[np.arange(num), np.argmax(mu, axis=1)] |= ~ok.any(axis=1)
    cum = np.cumsum(ok, axis=1)
    h = 2 * MAP_HALF / MAP_PX
    bx, by, mu_at = (np.zeros((num, 2)) for _ in range(3))
    for rep in range(2):
        k = np.floor(rng.uniform(size=num) * cum[:, -1])
        pix = np.argmax(cum > k[:, None], axis=1)
        jx, jy = rng.uniform(size=(2, num))
        bx[:, rep] = ((pix % MAP_PX + jx) * h - MAP_HALF) * theta_e
        by[:, rep] = ((pix // MAP_PX + jy) * h - MAP_HALF) * theta_e
        mu_at[:, rep] = mu[np.arange(num), pix]
    return bx, by, mu_at


def _morphology(rng: np.random.Generator, reff: np.ndarray) -> dict[str, np.ndarray]:
    """Sersic disk + 2-6 clumps: shapes, colours, clump weights/positions (source frame)."""
    num = len(reff)
    q = rng.uniform(0.3, 1.0, num)
    out = {
        "src_n": rng.uniform(0.5, 1.5, num),
        "src_q": q,
        "src_gr": rng.uniform(0.0, 0.6, num),
        "src_rz": rng.uniform(-0.1, 0.6, num),
        "knot_frac": rng.uniform(*KNOT_FRAC, num),
    }
    nk = rng.integers(2, MAX_KNOTS + 1, num)
    weights = rng.uniform(0.5, 1.5, (num, MAX_KNOTS)) * (np.arange(MAX_KNOTS) < nk[:, None])
    out["knot_w"] = weights / weights.sum(axis=1, keepdims=True)
    # clumps trace the disk: Gaussian offsets of R_e along the major axis, q R_e across it
    out["knot_dx"] = rng.standard_normal((num, MAX_KNOTS)) * reff[:, None] / np.sqrt(q)[:, None]
    out["knot_dy"] = rng.standard_normal((num, MAX_KNOTS)) * (reff * np.sqrt(q))[:, None]
    out["knot_sigma"] = np.maximum(rng.uniform(0.15, 0.35, (num, MAX_KNOTS)) * reff[:, None], 0.06)
    return out


def source_extent(pop: dict) -> np.ndarray:
    """Radius (arcsec) around the source centre holding its light: 99.8% of the Sersic light
    along the major axis, and every clump out to 3 sigma."""
    n = pop["src_n"]
    r_sersic = (gammaincinv(2 * n, 0.998) / sersic_bn(n)) ** n * pop["src_reff"]
    r_sersic = r_sersic / np.sqrt(pop["src_q"])
    knots = np.hypot(pop["knot_dx"], pop["knot_dy"]) + 3 * pop["knot_sigma"]
    return np.maximum(r_sersic, (knots * (pop["knot_w"] > 0)).max(axis=1))


def draw_sources(
    rng: np.random.Generator, lens: dict[str, np.ndarray], sky: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Draw the lensed source of every lens in ``lens`` (arrays of length L).

    Args:
        rng: the chunk's generator.
        lens: ``theta_e``, ``mass_q``, ``mass_phi``, ``gamma1``, ``gamma2`` per lens.
        sky: ``depth_r`` (r 5-sigma point-source depth, AB mag) and ``fwhm_r`` (r PSF FWHM,
            arcsec) at each lens.

    Returns:
        Per lens: ``src_mag_r``, ``src_z``, ``src_reff``, morphology (see :func:`_morphology`),
        and per replicate (L, 2): ``src_x``, ``src_y``, ``src_phi``, ``mu_map`` (the map's
        magnification at the drawn position).
    """
    num = len(lens["theta_e"])
    maps = magnification_maps(lens["mass_q"], lens["mass_phi"], lens["gamma1"], lens["gamma2"])
    src = _accept_sources(rng, maps, lens["theta_e"], sky)
    bx, by, mu_at = _place(rng, maps, src, lens["theta_e"])
    out = {"src_mag_r": src["mag"], "src_z": src["z"], "src_reff": src["reff"]}
    out.update(_morphology(rng, src["reff"]))
    out.update(src_x=bx, src_y=by, mu_map=mu_at, src_phi=rng.uniform(0.0, np.pi, (num, 2)))
    return out


def multiple_image_radius(
    q: np.ndarray, phi: np.ndarray, gamma1: np.ndarray, gamma2: np.ndarray
) -> np.ndarray:
    """Outer radius of the multiply-imaged source region per azimuth, in theta_E units.

    Negative-parity image-plane points (saddles: every multiple-image system has one) are traced
    to the source plane; the largest radius they reach per azimuth bin, widened to the bin's
    neighbours, bounds the cut and the caustics. Sources beyond it have one image.

    Returns:
        float64 (L, ``_NM_BINS``); bin ``k`` covers azimuths [k, k+1) x 2 pi / ``_NM_BINS``.
    """
    num = len(q)
    r, ang = _NM_RADII[:, None], _NM_ANGLES[None, :]
    x, y = (r * np.cos(ang))[None], (r * np.sin(ang))[None]  # (1, R, A)
    c3 = lambda a: np.asarray(a, np.float64)[:, None, None]  # noqa: E731
    lens = (np.ones((num, 1, 1)), c3(q), c3(phi), c3(gamma1), c3(gamma2))
    lam_t, lam_r = lens_eigenvalues(x, y, lens)
    ax, ay = sie_deflection(x, y, lens[0], lens[1], lens[2])
    sx, sy = shear_deflection(x, y, lens[3], lens[4])
    bx, by = x - ax - sx, y - ay - sy
    radius = np.where(lam_t * lam_r < 0, np.hypot(bx, by), 0.0).reshape(num, -1)
    azimuth = np.mod(np.arctan2(by, bx), 2 * np.pi).reshape(num, -1)
    k = np.minimum((azimuth / (2 * np.pi) * _NM_BINS).astype(np.int64), _NM_BINS - 1)
    out = np.zeros(num * _NM_BINS)
    np.maximum.at(out, (np.arange(num)[:, None] * _NM_BINS + k).ravel(), radius.ravel())
    out = out.reshape(num, _NM_BINS)
    return np.maximum(out, np.maximum(np.roll(out, 1, axis=1), np.roll(out, -1, axis=1)))


def _draw_limited_mag(rng: np.random.Generator, faint: np.ndarray) -> np.ndarray:
    """Counts magnitudes (``_draw_counts_mag``) truncated to ``[SRC_MAG_RANGE[0], faint]``."""
    k = COUNT_SLOPE * math.log(10.0)
    lo = SRC_MAG_RANGE[0]
    hi = np.clip(faint, lo + 0.1, SRC_MAG_RANGE[1])
    u = rng.uniform(size=len(faint))
    return hi + np.log(u + (1 - u) * np.exp(-k * (hi - lo))) / k


def _light_radius(shape: dict[str, np.ndarray], reff: np.ndarray) -> np.ndarray:
    """Radius (arcsec) outside which a near-miss source has little light: 2 R_e along the major
    axis (~5% of an exponential disk's light lies beyond it on one side) and every clump to
    2 sigma."""
    knots = np.hypot(shape["knot_dx"], shape["knot_dy"]) + 2 * shape["knot_sigma"]
    knots = (knots * (shape["knot_w"] > 0)).max(axis=1)
    return np.maximum(2 * reff / np.sqrt(shape["src_q"]), knots)


def draw_near_miss_sources(
    rng: np.random.Generator, lens: dict[str, np.ndarray], sky: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A source just outside the multiply-imaged region of each lens (near-miss controls).

    The source galaxy is the lens sample's (counts, LensPop sizes, clumpy disk) with the sample's
    lensed-flux limit at a typical near-miss magnification of ``_NM_MU``; its centre lies
    ``2 R_e + U(_NM_GAP) theta_E`` beyond the boundary of :func:`multiple_image_radius` at a
    uniform azimuth, so it forms one weakly distorted image and no counter-image.

    Args:
        rng: the chunk's generator.
        lens: ``theta_e``, ``mass_q``, ``mass_phi``, ``gamma1``, ``gamma2`` per lens.
        sky: ``depth_r`` (r 5-sigma point-source depth, AB mag) per lens.

    Returns:
        The keys of :func:`draw_sources`; both replicate columns hold the same position.
    """
    num = len(lens["theta_e"])
    theta_e = lens["theta_e"]
    faint = sky["depth_r"] - LIMIT_BELOW_DEPTH + 2.5 * math.log10(_NM_MU)
    mag = _draw_limited_mag(rng, faint)
    z = rng.uniform(*SRC_Z_RANGE, num)
    reff = _draw_reff(rng, mag, z)
    bound = multiple_image_radius(lens["mass_q"], lens["mass_phi"], lens["gamma1"], lens["gamma2"])
    k = rng.integers(0, _NM_BINS, num)
    azimuth = (k + rng.uniform(size=num)) * 2 * np.pi / _NM_BINS
    shape = _morphology(rng, reff)
    beta = bound[np.arange(num), k] * theta_e + _light_radius(shape, reff)
    beta += rng.uniform(*_NM_GAP, num) * theta_e
    unit_lens = (np.ones(num), *(lens[k] for k in ("mass_q", "mass_phi", "gamma1", "gamma2")))
    direction = np.stack([np.cos(azimuth), np.sin(azimuth)])
    beta, mu = _push_off_cusps(beta, direction, theta_e, unit_lens)
    two = lambda a: np.repeat(a[:, None], 2, axis=1)  # noqa: E731
    out = {"src_mag_r": mag, "src_z": z, "src_reff": reff, **shape}
    out.update(
        src_x=two(beta * direction[0]),
        src_y=two(beta * direction[1]),
        mu_map=two(mu),
        src_phi=two(rng.uniform(0.0, np.pi, num)),
    )
    return out


def _push_off_cusps(
    beta: np.ndarray, direction: np.ndarray, theta_e: np.ndarray, lens: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Move sources out by 5% per round (``_NM_MU_ROUNDS`` at most) while ``mu > _NM_MU_MAX``.

    Each source's magnification depends only on its own position, so a round recomputes it
    only for the sources it moved.

    Returns:
        The final ``beta`` (arcsec) and the single-image magnification there.
    """
    mu = _single_image_magnification(direction * beta / theta_e, lens)
    for _ in range(_NM_MU_ROUNDS):
        rows = np.flatnonzero(mu > _NM_MU_MAX)
        if len(rows) == 0:
            break
        beta = beta.copy()
        beta[rows] = beta[rows] * 1.05
        sub_lens = tuple(a[rows] for a in lens)
        mu[rows] = _single_image_magnification(
            direction[:, rows] * beta[rows] / theta_e[rows], sub_lens
        )
    return beta, mu


def _single_image_magnification(beta: np.ndarray, lens: tuple[np.ndarray, ...]) -> np.ndarray:
    """Point-source magnification of the one image of a source outside the caustics.

    The image solves ``theta = beta + alpha(theta)``, found by fixed-point iteration from
    ``beta``: outside the critical curve the deflection changes slowly (``kappa + gamma < 1``),
    so the iteration contracts.

    Args:
        beta: (2, L) source positions in theta_E units.
        lens: ``(1, q, phi, gamma1, gamma2)``, each (L,).
    """
    x, y = beta[0] * 1.0, beta[1] * 1.0
    for _ in range(40):
        ax, ay = sie_deflection(x, y, *lens[:3])
        sx, sy = shear_deflection(x, y, *lens[3:])
        x, y = beta[0] + ax + sx, beta[1] + ay + sy
    lam_t, lam_r = lens_eigenvalues(x, y, lens)
    return 1.0 / np.abs(lam_t * lam_r)
