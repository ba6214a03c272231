"""Render a batch of galaxies into noisy 64x64 g/r/z stamps (nanomaggies per pixel).

Order of operations per galaxy: LRG Sersic light (2x supersampled, core pixels 8x) + field
galaxies and stars + confuser light (controls only) -> per-band Moffat PSF -> sky noise from
psfdepth/psfsize plus shot noise. Positives add, per replicate, their SIE + shear lensed clumpy
Sersic source (``sources``) at its drawn magnitude, ray-traced 2x supersampled on a central
box sized to hold every image of the source (up to the stamp plus the PSF's reach), convolved
without cropping and pasted, with its own shot noise. The two replicates of a positive share the
lens image and its noise (as in the real pipeline, where arcs are painted onto one coadd).
Near-miss controls get the same lensed source, placed outside the caustics
(``sources.draw_near_miss_sources``), added to their image before the noise.

Truth per replicate (``RenderedBatch.truth``): ``arc_snr`` is the original's definition, the
peak r pixel of the noise-free PSF-convolved arc over the coadd sigma (sky and lens shot noise,
not the arc's own; ``reference/original_pipeline.md`` section 1.8); ``arc_snr_sum`` is the
integrated S/N of the best pixel set (LensPop's estimator, ``reference/science.md`` 2.9);
``magnification`` the lensed over intrinsic source flux (pre-PSF, whole image plane);
``arc_lens_flux_ratio`` the arc's r flux on the stamp over the lens galaxy's; the stretches are
the inverse eigenvalues of the lens Jacobian at the brightest pixel of the lensed source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from haloscope.preprocess.sim.config import CONTROL_KINDS
from haloscope.preprocess.sim.confusers import RENDERERS, render_confusers
from haloscope.preprocess.sim.field import field_neighbours
from haloscope.preprocess.sim.physics import (
    PIXEL_SCALE,
    STAMP_PX,
    bin_image,
    convolve_full,
    convolve_stamps,
    elliptical_radius,
    kernel_spectra,
    lens_eigenvalues,
    mag_to_nmgy,
    moffat_fwhm_from_psfsize,
    moffat_kernels,
    pixel_grid,
    sersic_bn,
    sersic_flux_per_ie,
    sersic_shape,
    shear_deflection,
    sie_deflection,
    sie_max_deflection,
    sky_sigma_nmgy,
)
from haloscope.preprocess.sim.population import Population
from haloscope.preprocess.sim.sources import MAX_KNOTS, source_extent

__all__ = [
    "RenderedBatch",
    "render_batch",
    "near_miss_light",
    "noise_variance",
    "box_px_needed",
    "GAIN_E_PER_NMGY_S",
    "EXPTIME_S",
    "TRUTH_COLUMNS",
    "BOX_SIZES",
]

F32 = np.float32
PIX_AREA = PIXEL_SCALE**2
# DECam nmgy -> e-/s and fiducial exposure per pass, g r z (reference/science.md 2.4)
GAIN_E_PER_NMGY_S = np.array([44.1, 53.4, 39.2])
EXPTIME_S = np.array([70.0, 50.0, 100.0])
TRUTH_COLUMNS = (
    "arc_snr",
    "arc_snr_g",
    "arc_snr_z",
    "arc_snr_sum",
    "magnification",
    "arc_lens_flux_ratio",
    "tangential_stretch",
    "radial_stretch",
)

_INNER = pixel_grid(7, 4, center_px=3).astype(F32)  # central 7x7 pixels at 4x
_CORE = pixel_grid(1, 16, center_px=0).astype(F32)  # central pixel at 16x
_AX1 = pixel_grid(STAMP_PX, 1).astype(F32)
ARC_OVERSAMPLE = 2
# Central ray-tracing boxes (px); the largest is the stamp plus the 33-px PSF kernel's reach.
BOX_SIZES = (16, 24, 32, 40, 48, 64, 80, 96)
_NEAR_MISS = CONTROL_KINDS.index("near_miss")
_SHAPE_KEYS = ("src_n", "src_reff", "src_q", "knot_dx", "knot_dy", "knot_sigma", "knot_w")


@dataclass
class RenderedBatch:
    """Images and truth of one batch.

    Attributes:
        base: (B, 3, 64, 64) float32 noisy lens-only image (the control image).
        pos_index: (P,) positions in the batch of the positives.
        positives: (P, 2, 3, 64, 64) float32 images of the two replicates.
        truth: ``TRUTH_COLUMNS`` -> (P, 2) per-replicate values (see the module docstring).
        arcs: (P, 2, 3, 64, 64) noise-free PSF-convolved arcs (only with ``keep_arcs``).
    """

    base: np.ndarray
    pos_index: np.ndarray
    positives: np.ndarray
    truth: dict[str, np.ndarray]
    arcs: np.ndarray | None = None


def _c(a: np.ndarray) -> np.ndarray:
    """(B,) -> (B, 1, 1) float32 for broadcasting over images."""
    return np.asarray(a, F32)[:, None, None]


def _lens_light(pop: Population) -> np.ndarray:
    """Sersic LRG light, (B, 3, 64, 64) nmgy per pixel.

    Sampled at pixel centres (science.md 2.11: 1x is acceptable for lens light) except the
    central 7x7 pixels, integrated 4x4 per pixel where the n = 3-6 profile is steep, and the
    central pixel 16x16 (the cusp).
    """
    n, re = pop["lens_n"], pop["lens_reff"]
    bn = sersic_bn(n)
    ie = mag_to_nmgy(pop["lens_mag"]) / sersic_flux_per_ie(re, n, bn)[:, None]  # (B, 3)
    args = (_c(re), _c(n), _c(bn))
    q, phi = _c(pop["lens_q"]), _c(pop["lens_phi"])
    pix = sersic_shape(elliptical_radius(_AX1[None, None, :], _AX1[None, :, None], q, phi), *args)
    inner = elliptical_radius(_INNER[None, None, :], _INNER[None, :, None], q, phi)
    pix[:, 29:36, 29:36] = bin_image(sersic_shape(inner, *args), 4)
    core_r = elliptical_radius(_CORE[None, None, :], _CORE[None, :, None], q, phi)
    pix[:, 32, 32] = bin_image(sersic_shape(core_r, *args), 16)[:, 0, 0]  # resolve the cusp
    return pix[:, None] * (ie * PIX_AREA).astype(F32)[:, :, None, None]


def noise_variance(model: np.ndarray, sky_sigma: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Per-pixel variance: sky ``sigma^2`` plus Poisson shot noise ``max(model, 0) / gain``.

    Args:
        model: (B, 3, H, W) noise-free image in nmgy.
        sky_sigma: (B, 3) sky sigma in nmgy per pixel.
        gain: (B, 3) electrons per nmgy over the coadd's effective exposure.
    """
    sky2 = (sky_sigma**2).astype(F32)[:, :, None, None]
    return sky2 + np.maximum(model, 0) / gain.astype(F32)[:, :, None, None]


def _trace(pop: Population, idx: np.ndarray, box_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Source-plane positions ``theta - alpha(theta)`` of a central box's 2x sub-pixels."""
    grid = pixel_grid(box_px, ARC_OVERSAMPLE, center_px=box_px // 2).astype(F32)
    x, y = grid[None, None, :], grid[None, :, None]
    ax, ay = sie_deflection(
        x, y, _c(pop["theta_e"][idx]), _c(pop["mass_q"][idx]), _c(pop["mass_phi"][idx])
    )
    gx, gy = shear_deflection(x, y, _c(pop["gamma1"][idx]), _c(pop["gamma2"][idx]))
    return x - ax - gx, y - ay - gy


def _unit_arcs(
    pop: Population,
    idx: np.ndarray,
    rep: int,
    box_px: int,
    traced: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lensed source of unit intrinsic r flux on a central ``box_px`` box, 2x supersampled.

    Args:
        traced: ``_trace(pop, idx, box_px)``, shared by both replicates (computed if None).

    Returns:
        (P, 3, box_px, box_px) pre-PSF nmgy per pixel and (P, 2) arcsec position of the
        brightest r pixel.
    """
    tx, ty = _trace(pop, idx, box_px) if traced is None else traced
    bx = tx - _c(pop["src_x"][idx, rep])
    by = ty - _c(pop["src_y"][idx, rep])
    re, n, q = pop["src_reff"][idx], pop["src_n"][idx], pop["src_q"][idx]
    phi = pop["src_phi"][idx, rep]
    bn = sersic_bn(n)
    smooth = sersic_shape(elliptical_radius(bx, by, _c(q), _c(phi)), _c(re), _c(n), _c(bn))
    smooth *= _c(1.0 / sersic_flux_per_ie(re, n, bn))
    knots = _knot_light(pop, idx, phi, bx, by)
    smooth_pix = bin_image(smooth, ARC_OVERSAMPLE) * F32(PIX_AREA)
    knot_pix = bin_image(knots, ARC_OVERSAMPLE) * F32(PIX_AREA)
    f = pop["knot_frac"][idx]
    gr, rz = pop["src_gr"][idx], pop["src_rz"][idx]
    # clumps are bluer than the diffuse light (colour gradient, science.md 2.8)
    c_s = np.stack([10 ** (-0.4 * gr), np.ones_like(gr), 10 ** (0.4 * rz)], 1) * (1 - f)[:, None]
    c_k = (
        np.stack([10 ** (-0.4 * (gr - 0.3)), np.ones_like(gr), 10 ** (0.4 * (rz - 0.2))], 1)
        * f[:, None]
    )
    unit = (
        smooth_pix[:, None] * c_s.astype(F32)[:, :, None, None]
        + knot_pix[:, None] * c_k.astype(F32)[:, :, None, None]
    )
    peak = np.argmax(unit[:, 1].reshape(len(idx), -1), axis=1)
    axis = pixel_grid(box_px, 1, center_px=box_px // 2)
    return unit, np.stack([axis[peak % box_px], axis[peak // box_px]], axis=1)


def _knot_light(
    pop: Population, idx: np.ndarray, phi: np.ndarray, bx: np.ndarray, by: np.ndarray
) -> np.ndarray:
    """Sum of the sources' Gaussian clumps at source-plane positions ``(bx, by)`` (P, H, W).

    A clump of zero weight (a source has 2 to ``MAX_KNOTS``) adds exactly 0, so each clump is
    evaluated only on the rows that have it.
    """
    knots = np.zeros_like(bx)
    cphi, sphi = np.cos(phi), np.sin(phi)
    for k in range(MAX_KNOTS):
        rows = np.flatnonzero(pop["knot_w"][idx, k] > 0)
        if len(rows) == 0:
            continue
        every = len(rows) == len(idx)
        sub = idx[rows]
        dx, dy = pop["knot_dx"][sub, k], pop["knot_dy"][sub, k]
        kx, ky = cphi[rows] * dx - sphi[rows] * dy, sphi[rows] * dx + cphi[rows] * dy
        sig2 = pop["knot_sigma"][sub, k] ** 2
        # in place: (x - kx)^2 + (y - ky)^2, times -1/(2 sigma^2), exp, times the amplitude
        d2 = (bx if every else bx[rows]) - _c(kx)
        np.square(d2, out=d2)
        dy2 = (by if every else by[rows]) - _c(ky)
        np.square(dy2, out=dy2)
        d2 += dy2
        d2 *= _c(-0.5 / sig2)
        np.exp(d2, out=d2)
        d2 *= _c(pop["knot_w"][sub, k] / (2 * np.pi * sig2))
        if every:
            knots += d2
        else:
            knots[rows] += d2
    return knots


def box_px_needed(pop: Population, idx: np.ndarray) -> np.ndarray:
    """Smallest central box (from ``BOX_SIZES``) that holds every image of both replicates.

    Images of source points within ``source_extent`` of ``beta`` lie within
    ``(|beta| + extent + theta_E max|alpha|) / (1 - |gamma|)`` of the lens; beyond the stamp plus
    the PSF kernel's half-width (the largest box) no light can reach the stamp.
    """
    beta = np.hypot(pop["src_x"][idx], pop["src_y"][idx]).max(axis=1)
    reach = beta + source_extent({k: pop[k][idx] for k in _SHAPE_KEYS})
    reach = reach + pop["theta_e"][idx] * sie_max_deflection(pop["mass_q"][idx])
    half_px = np.ceil(reach / (1 - pop["shear"][idx]) / PIXEL_SCALE) + 1
    sizes = np.array(BOX_SIZES)
    return sizes[np.minimum(np.searchsorted(sizes // 2, half_px), len(sizes) - 1)]


def _paste(full: np.ndarray, box_px: int, kernel_px: int) -> np.ndarray:
    """Place a full convolution of a central ``box_px`` box onto (P, 3, 64, 64) stamps."""
    off = STAMP_PX // 2 - box_px // 2 - kernel_px // 2  # stamp index of full index 0
    lo, hi = max(0, off), min(STAMP_PX, off + full.shape[-1])
    out = np.zeros((*full.shape[:2], STAMP_PX, STAMP_PX), F32)
    out[:, :, lo:hi, lo:hi] = full[:, :, lo - off : hi - off, lo - off : hi - off]
    return out


def _unit_stamps(pop, idx, kernels, num_reps: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF-convolved unit-flux arcs of the first ``num_reps`` replicates on the stamp.

    Returns:
        (P, R, 3, 64, 64) stamps, (P, R) magnification, (P, R, 2) brightest-pixel positions.
    """
    num = len(idx)
    stamps = np.zeros((num, num_reps, 3, STAMP_PX, STAMP_PX), F32)
    mag, peak = np.zeros((num, num_reps)), np.zeros((num, num_reps, 2))
    boxes = box_px_needed(pop, idx)
    k_px = kernels.shape[-1]
    for box_px in np.unique(boxes):
        sel = np.flatnonzero(boxes == box_px)
        spectra = kernel_spectra(kernels[sel], int(box_px))
        traced = _trace(pop, idx[sel], int(box_px))
        for rep in range(num_reps):
            unit, peak[sel, rep] = _unit_arcs(pop, idx[sel], rep, int(box_px), traced)
            mag[sel, rep] = unit[:, 1].sum(axis=(1, 2))
            full = convolve_full(unit, spectra, k_px)
            stamps[sel, rep] = _paste(full, int(box_px), k_px)
    return stamps, mag, peak


def _snr_sum(arc: np.ndarray, var: np.ndarray, top: int = 512) -> np.ndarray:
    """LensPop's integrated S/N: pixels sorted by S/N, max of cumsum(signal)/sqrt(cumsum(var)).

    Only the ``top`` best pixels are sorted; a row whose maximum falls on the last of them is
    redone over all pixels, so the result is exact.
    """
    num = len(arc)
    signal, variance = arc.reshape(num, -1), var.reshape(num, -1)
    snr = signal / np.sqrt(variance)
    best = np.argpartition(-snr, top, axis=1)[:, :top]
    best = np.take_along_axis(best, np.argsort(-np.take_along_axis(snr, best, 1), 1), 1)
    out, at = _cum_snr(signal, variance, best)
    redo = np.flatnonzero(at == top - 1)
    if len(redo):
        order = np.argsort(-snr[redo], axis=1)
        out[redo] = _cum_snr(signal[redo], variance[redo], order)[0]
    return out


def _cum_snr(signal, variance, order) -> tuple[np.ndarray, np.ndarray]:
    """Max over prefixes of ``order`` of sum(signal)/sqrt(sum(var)), and where it is reached."""
    cum_s = np.cumsum(np.take_along_axis(signal, order, axis=1), axis=1, dtype=np.float64)
    cum_v = np.cumsum(np.take_along_axis(variance, order, axis=1), axis=1, dtype=np.float64)
    ratio = cum_s / np.sqrt(cum_v)
    return ratio.max(axis=1), ratio.argmax(axis=1)


def quantize_pixels(images: np.ndarray, sky: np.ndarray, q: float) -> np.ndarray:
    """Round (B, 3, H, W) pixels to a power-of-two step <= sky sigma / q per galaxy and band.

    Lossy tile compression of survey images quantises noise the same way; a power-of-two
    step leaves the float32 mantissas' low bits zero, so the npz deflates ~3x smaller while
    the added error (step / sqrt(12) <= sigma / (q sqrt(12))) is negligible next to the noise.
    """
    step = np.exp2(np.floor(np.log2(np.maximum(sky, 1e-30) / q))).astype(F32)
    step = step.reshape(*step.shape, 1, 1)
    return (np.round(images / step) * step).astype(F32)


def render_batch(
    rng: np.random.Generator,
    pop: Population,
    with_neighbours: bool = True,
    quantize: float = 0.0,
    keep_arcs: bool = False,
) -> RenderedBatch:
    """Render every galaxy of ``pop`` (a slice of a chunk's population).

    Args:
        rng: the chunk's generator (consumed in a fixed order, so output is reproducible).
        pop: per-galaxy parameters from :func:`draw_population`.
        with_neighbours: add field galaxies and stars (off only for noise tests).
        quantize: if > 0, round pixels to a step <= sky sigma / quantize (see
            :func:`quantize_pixels`); 0 keeps exact float32.
        keep_arcs: also return the noise-free PSF-convolved arcs (``RenderedBatch.arcs``).

    Returns:
        The batch's images and measured truth.
    """
    num = len(pop["ra"])
    model = _lens_light(pop)
    if with_neighbours:
        model += field_neighbours(rng, num)
    lens_flux_r = mag_to_nmgy(pop["lens_mag"][:, 1])
    g_r = pop["lens_mag"][:, 0] - pop["lens_mag"][:, 1]
    r_z = pop["lens_mag"][:, 1] - pop["lens_mag"][:, 2]
    for k, kind in enumerate(CONTROL_KINDS[1:], start=1):
        sel = np.flatnonzero(pop["control_kind"] == k)
        if len(sel) and kind in RENDERERS:
            model[sel] += render_confusers(rng, kind, lens_flux_r[sel], g_r[sel], r_z[sel])
    fwhm_px = moffat_fwhm_from_psfsize(pop["psf_local"]) / PIXEL_SCALE  # (B, 3)
    kernels = moffat_kernels(fwhm_px.reshape(-1))
    kernels = kernels.reshape(num, 3, *kernels.shape[-2:])
    model = convolve_stamps(model, kernels)
    near = np.flatnonzero(pop["control_kind"] == _NEAR_MISS)
    if len(near):  # lensed like an arc, so added after the PSF as the arcs are
        model[near] += near_miss_light(pop, near, kernels[near])[0]
    sky = sky_sigma_nmgy(pop["depth_local"], pop["psf_local"])
    gain = GAIN_E_PER_NMGY_S * EXPTIME_S * pop["n_exp"][:, None]
    var = noise_variance(model, sky, gain)
    base = rng.standard_normal(model.shape, dtype=F32)
    base *= np.sqrt(var)
    base += model  # model + noise, added in place
    rb = _add_arcs(rng, pop, base, var, kernels, gain, keep_arcs)
    if quantize > 0:
        rb.base = quantize_pixels(rb.base, sky, quantize)
        if len(rb.pos_index):
            pos = rb.positives.reshape(-1, 3, STAMP_PX, STAMP_PX)
            pos_sky = np.repeat(sky[rb.pos_index], 2, axis=0)
            rb.positives = quantize_pixels(pos, pos_sky, quantize).reshape(rb.positives.shape)
    return rb


def near_miss_light(
    pop: Population, idx: np.ndarray, kernels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PSF-convolved light of the near-miss sources of galaxies ``idx`` (replicate 0's position).

    Args:
        pop: population with the sources of ``sources.draw_near_miss_sources``.
        idx: (N,) galaxies to render.
        kernels: (N, 3, K, K) their PSF kernels.

    Returns:
        (N, 3, 64, 64) float32 noise-free nmgy per pixel and (N,) magnification (lensed over
        intrinsic flux, pre-PSF).
    """
    unit, mag, _ = _unit_stamps(pop, idx, kernels, num_reps=1)
    flux = mag_to_nmgy(pop["src_mag_r"][idx]).astype(F32)
    return unit[:, 0] * flux[:, None, None, None], mag[:, 0]


def _add_arcs(rng, pop, base, var, kernels, gain, keep_arcs) -> RenderedBatch:
    """Lens the sources of the batch's positives onto their base images, two replicates each."""
    idx = np.flatnonzero(~pop["is_control"])
    num_pos = len(idx)
    out = np.empty((num_pos, 2, 3, STAMP_PX, STAMP_PX), F32)
    truth = {k: np.zeros((num_pos, 2)) for k in TRUTH_COLUMNS}
    if num_pos == 0:
        return RenderedBatch(base=base, pos_index=idx, positives=out, truth=truth)
    unit, truth["magnification"], peak = _unit_stamps(pop, idx, kernels[idx])
    flux = mag_to_nmgy(pop["src_mag_r"][idx]).astype(F32)
    unit *= flux[:, None, None, None, None]  # now the noise-free arcs in nmgy
    lens_flux_r = mag_to_nmgy(pop["lens_mag"][idx, 1])
    sigma = np.sqrt(var[idx])
    lens = tuple(pop[k][idx, None] for k in ("theta_e", "mass_q", "mass_phi", "gamma1", "gamma2"))
    lam_t, lam_r = lens_eigenvalues(peak[..., 0], peak[..., 1], lens)
    truth["tangential_stretch"], truth["radial_stretch"] = 1 / np.abs(lam_t), 1 / np.abs(lam_r)
    base_pos, gain_pos = base[idx], gain[idx].astype(F32)[:, :, None, None]
    for rep in range(2):
        arc = unit[:, rep]
        shot = np.maximum(arc, 0)  # the arc's own shot noise: sigma^2 = arc / gain
        shot /= gain_pos
        np.sqrt(shot, out=shot)
        shot *= rng.standard_normal(arc.shape, dtype=F32)
        np.add(base_pos, arc, out=out[:, rep])
        out[:, rep] += shot
        snr = (arc / sigma).max(axis=(2, 3))  # coadd sigma: sky + lens shot noise, not the arc's
        truth["arc_snr_g"][:, rep], truth["arc_snr"][:, rep] = snr[:, 0], snr[:, 1]
        truth["arc_snr_z"][:, rep] = snr[:, 2]
        truth["arc_snr_sum"][:, rep] = _snr_sum(arc[:, 1], var[idx, 1])
        truth["arc_lens_flux_ratio"][:, rep] = arc[:, 1].sum(axis=(1, 2)) / lens_flux_r
    arcs = unit if keep_arcs else None
    return RenderedBatch(base=base, pos_index=idx, positives=out, truth=truth, arcs=arcs)
