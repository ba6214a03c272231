"""Render a batch of galaxies into noisy 64x64 g/r/z stamps (nanomaggies per pixel).

Order of operations per galaxy: LRG Sersic light (2x supersampled, core pixels 8x) + field
galaxies and stars + confuser light (controls only) -> per-band Moffat PSF -> sky noise from
psfdepth/psfsize plus shot noise. Positives add, per replicate, an SIE + shear lensed clumpy
Sersic source ray-traced on a 2x supersampled 40x40-pixel central box, PSF-convolved, scaled to
its target peak-pixel SNR, with its own shot noise. The two replicates of a positive share the
lens image and its noise (as in the real pipeline, where arcs are painted onto one coadd).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from haloscope.preprocess.sim_config import CONTROL_KINDS
from haloscope.preprocess.sim_confusers import render_confusers
from haloscope.preprocess.sim_physics import (
    PIXEL_SCALE,
    STAMP_PX,
    bin_image,
    convolve_stamps,
    elliptical_radius,
    kernel_spectra,
    mag_to_nmgy,
    moffat_fwhm_from_psfsize,
    moffat_kernels,
    pixel_grid,
    sersic_bn,
    sersic_flux_per_ie,
    sersic_shape,
    shear_deflection,
    sie_deflection,
    sky_sigma_nmgy,
)
from haloscope.preprocess.sim_population import MAX_KNOTS, Population

__all__ = ["RenderedBatch", "render_batch", "noise_variance", "GAIN_E_PER_NMGY_S", "EXPTIME_S"]

F32 = np.float32
PIX_AREA = PIXEL_SCALE**2
# DECam nmgy -> e-/s and fiducial exposure per pass, g r z (reference/science.md 2.4)
GAIN_E_PER_NMGY_S = np.array([44.1, 53.4, 39.2])
EXPTIME_S = np.array([70.0, 50.0, 100.0])
SRC_MAG_RANGE = (20.0, 28.5)  # intrinsic source r magnitudes allowed by the SNR targeting

_AX2 = pixel_grid(STAMP_PX, 2).astype(F32)
_CORE = pixel_grid(3, 8, center_px=1).astype(F32)  # central 3x3 pixels at 8x
_AX1 = pixel_grid(STAMP_PX, 1).astype(F32)
BOX_PX, BOX_LO, ARC_OVERSAMPLE = 40, 12, 2
_BOX = pixel_grid(BOX_PX, ARC_OVERSAMPLE, center_px=BOX_PX // 2).astype(F32)


@dataclass
class RenderedBatch:
    """Images and truth of one batch.

    Attributes:
        base: (B, 3, 64, 64) float32 noisy lens-only image (the control image).
        pos_index: (P,) positions in the batch of the positives.
        positives: (P, 2, 3, 64, 64) float32 images of the two replicates.
        arc_snr: (P, 2) peak-pixel r-band arc SNR per replicate.
        magnification: (P, 2) lensed/intrinsic source flux on the stamp (before PSF).
        src_mag_r: (P,) intrinsic source r magnitude.
        arc_snr_g, arc_snr_z: (P, 2) the same peak SNR in g and z.
    """

    base: np.ndarray
    pos_index: np.ndarray
    positives: np.ndarray
    arc_snr: np.ndarray
    magnification: np.ndarray
    src_mag_r: np.ndarray
    arc_snr_g: np.ndarray
    arc_snr_z: np.ndarray


def _c(a: np.ndarray) -> np.ndarray:
    """(B,) -> (B, 1, 1) float32 for broadcasting over images."""
    return np.asarray(a, F32)[:, None, None]


def _lens_light(pop: Population) -> np.ndarray:
    """Sersic LRG light, (B, 3, 64, 64) nmgy per pixel."""
    n, re = pop["lens_n"], pop["lens_reff"]
    bn = sersic_bn(n)
    ie = mag_to_nmgy(pop["lens_mag"]) / sersic_flux_per_ie(re, n, bn)[:, None]  # (B, 3)
    args = (_c(re), _c(n), _c(bn))
    radius = elliptical_radius(
        _AX2[None, None, :], _AX2[None, :, None], _c(pop["lens_q"]), _c(pop["lens_phi"])
    )
    pix = bin_image(sersic_shape(radius, *args), 2)
    core_r = elliptical_radius(
        _CORE[None, None, :], _CORE[None, :, None], _c(pop["lens_q"]), _c(pop["lens_phi"])
    )
    pix[:, 31:34, 31:34] = bin_image(sersic_shape(core_r, *args), 8)  # resolve the cusp
    return pix[:, None] * (ie * PIX_AREA).astype(F32)[:, :, None, None]


def _neighbours(rng: np.random.Generator, num: int) -> np.ndarray:
    """Field galaxies (up to 3, exponential) and stars (up to 1), (B, 3, 64, 64) nmgy."""
    out = np.zeros((num, 3, STAMP_PX, STAMP_PX), F32)
    count = np.minimum(rng.poisson(0.8, num), 3)
    for k in range(3):
        cx, cy = rng.uniform(-8.4, 8.4, (2, num))
        radius = elliptical_radius(
            _AX1[None, None, :] - _c(cx),
            _AX1[None, :, None] - _c(cy),
            _c(rng.uniform(0.4, 1.0, num)),
            _c(rng.uniform(0, np.pi, num)),
        )
        blob = sersic_shape(radius, _c(rng.uniform(0.2, 1.0, num)), F32(1.0), F32(sersic_bn(1.0)))
        blob /= np.maximum(blob.sum(axis=(1, 2), keepdims=True), 1e-30)
        flux = mag_to_nmgy(rng.uniform(20.0, 24.5, num)) * (count > k)
        colour = np.stack(
            [
                10 ** (-0.4 * rng.uniform(0.3, 1.6, num)),
                np.ones(num),
                10 ** (0.4 * rng.uniform(0.2, 1.2, num)),
            ],
            1,
        )
        out += blob[:, None] * (flux[:, None] * colour).astype(F32)[:, :, None, None]
    has_star = rng.uniform(size=num) < 0.25
    sx, sy = rng.uniform(0, STAMP_PX - 1, (2, num))
    flux = mag_to_nmgy(rng.uniform(17.0, 23.0, num)) * has_star
    colour = np.stack(
        [
            10 ** (-0.4 * rng.uniform(0.3, 1.4, num)),
            np.ones(num),
            10 ** (0.4 * rng.uniform(0.1, 0.8, num)),
        ],
        1,
    )
    ix, iy = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - ix, sy - iy
    rows = np.arange(num)
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        out[rows, :, iy + dy, ix + dx] += (flux * w)[:, None] * colour  # bilinear point source
    return out


def noise_variance(model: np.ndarray, sky_sigma: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Per-pixel variance: sky ``sigma^2`` plus Poisson shot noise ``max(model, 0) / gain``.

    Args:
        model: (B, 3, H, W) noise-free image in nmgy.
        sky_sigma: (B, 3) sky sigma in nmgy per pixel.
        gain: (B, 3) electrons per nmgy over the coadd's effective exposure.
    """
    sky2 = (sky_sigma**2).astype(F32)[:, :, None, None]
    return sky2 + np.maximum(model, 0) / gain.astype(F32)[:, :, None, None]


def _unit_arcs(pop: Population, idx: np.ndarray, rep: int) -> tuple[np.ndarray, np.ndarray]:
    """Lensed source of unit intrinsic r flux: (P, 3, 40, 40) pre-PSF box and magnification."""
    x, y = _BOX[None, None, :], _BOX[None, :, None]
    ax, ay = sie_deflection(
        x, y, _c(pop["theta_e"][idx]), _c(pop["mass_q"][idx]), _c(pop["mass_phi"][idx])
    )
    gx, gy = shear_deflection(x, y, _c(pop["gamma1"][idx]), _c(pop["gamma2"][idx]))
    bx = x - ax - gx - _c(pop["src_x"][idx, rep])
    by = y - ay - gy - _c(pop["src_y"][idx, rep])
    re, n, q = pop["src_reff"][idx], pop["src_n"][idx], pop["src_q"][idx]
    phi = pop["src_phi"][idx, rep]
    bn = sersic_bn(n)
    smooth = sersic_shape(elliptical_radius(bx, by, _c(q), _c(phi)), _c(re), _c(n), _c(bn))
    smooth *= _c(1.0 / sersic_flux_per_ie(re, n, bn))
    knots = np.zeros_like(smooth)
    cphi, sphi = np.cos(phi), np.sin(phi)
    for k in range(MAX_KNOTS):
        dx, dy = pop["knot_dx"][idx, k], pop["knot_dy"][idx, k]
        kx, ky = cphi * dx - sphi * dy, sphi * dx + cphi * dy
        sig2 = pop["knot_sigma"][idx, k] ** 2
        d2 = (bx - _c(kx)) ** 2 + (by - _c(ky)) ** 2
        knots += _c(pop["knot_w"][idx, k] / (2 * np.pi * sig2)) * np.exp(d2 * _c(-0.5 / sig2))
    smooth_pix = bin_image(smooth, ARC_OVERSAMPLE) * F32(PIX_AREA)
    knot_pix = bin_image(knots, ARC_OVERSAMPLE) * F32(PIX_AREA)
    f = pop["knot_frac"][idx]
    gr, rz = pop["src_gr"][idx], pop["src_rz"][idx]
    c_s = np.stack([10 ** (-0.4 * gr), np.ones_like(gr), 10 ** (0.4 * rz)], 1) * (1 - f)[:, None]
    c_k = (
        np.stack([10 ** (-0.4 * (gr - 0.3)), np.ones_like(gr), 10 ** (0.4 * (rz - 0.2))], 1)
        * f[:, None]
    )
    unit = (
        smooth_pix[:, None] * c_s.astype(F32)[:, :, None, None]
        + knot_pix[:, None] * c_k.astype(F32)[:, :, None, None]
    )
    return unit, unit[:, 1].sum(axis=(1, 2))


def _flux_for_snr(
    unit_r: np.ndarray, var_r: np.ndarray, gain_r: np.ndarray, snr: np.ndarray
) -> np.ndarray:
    """Source r flux giving peak SNR ``snr`` at the best pixel (shot noise of the arc included)."""
    num = len(snr)
    flat_u, flat_v = unit_r.reshape(num, -1), var_r.reshape(num, -1)
    best = np.argmax(flat_u / np.sqrt(flat_v), axis=1)
    a = np.maximum(flat_u[np.arange(num), best].astype(np.float64), 1e-12)
    v0 = flat_v[np.arange(num), best].astype(np.float64)
    s2 = snr.astype(np.float64) ** 2
    peak = 0.5 * (s2 / gain_r + np.sqrt(s2**2 / gain_r**2 + 4 * s2 * v0))
    flux = peak / a
    lo, hi = mag_to_nmgy(SRC_MAG_RANGE[1]), mag_to_nmgy(SRC_MAG_RANGE[0])
    return np.clip(flux, lo, hi)


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
    rng: np.random.Generator, pop: Population, with_neighbours: bool = True, quantize: float = 0.0
) -> RenderedBatch:
    """Render every galaxy of ``pop`` (a slice of a chunk's population).

    Args:
        rng: the chunk's generator (consumed in a fixed order, so output is reproducible).
        pop: per-galaxy parameters from :func:`draw_population`.
        with_neighbours: add field galaxies and stars (off only for noise tests).
        quantize: if > 0, round pixels to a step <= sky sigma / quantize (see
            :func:`quantize_pixels`); 0 keeps exact float32.

    Returns:
        The batch's images and measured truth.
    """
    num = len(pop["ra"])
    model = _lens_light(pop)
    if with_neighbours:
        model += _neighbours(rng, num)
    lens_flux_r = mag_to_nmgy(pop["lens_mag"][:, 1])
    g_r = pop["lens_mag"][:, 0] - pop["lens_mag"][:, 1]
    r_z = pop["lens_mag"][:, 1] - pop["lens_mag"][:, 2]
    for k, kind in enumerate(CONTROL_KINDS[1:], start=1):
        sel = np.flatnonzero(pop["control_kind"] == k)
        if len(sel):
            model[sel] += render_confusers(rng, kind, lens_flux_r[sel], g_r[sel], r_z[sel])
    fwhm_px = moffat_fwhm_from_psfsize(pop["psf_local"]) / PIXEL_SCALE  # (B, 3)
    kernels = moffat_kernels(fwhm_px.reshape(-1))
    kernels = kernels.reshape(num, 3, *kernels.shape[-2:])
    spectra = kernel_spectra(kernels)  # shared by the lens image and both arc replicates
    model = convolve_stamps(model, kernels, spectra)
    sky = sky_sigma_nmgy(pop["depth_local"], pop["psf_local"])
    gain = GAIN_E_PER_NMGY_S * EXPTIME_S * pop["n_exp"][:, None]
    var = noise_variance(model, sky, gain)
    base = model + rng.standard_normal(model.shape, dtype=F32) * np.sqrt(var)
    rb = _add_arcs(rng, pop, base, var, (kernels, spectra), gain)
    if quantize > 0:
        rb.base = quantize_pixels(rb.base, sky, quantize)
        if len(rb.pos_index):
            pos = rb.positives.reshape(-1, 3, STAMP_PX, STAMP_PX)
            pos_sky = np.repeat(sky[rb.pos_index], 2, axis=0)
            rb.positives = quantize_pixels(pos, pos_sky, quantize).reshape(rb.positives.shape)
    return rb


def _add_arcs(rng, pop, base, var, psf, gain) -> RenderedBatch:
    """Lens the sources of the batch's positives onto their base images, two replicates each."""
    idx = np.flatnonzero(~pop["is_control"])
    kernels, spectra = psf[0][idx], psf[1][idx]
    num_pos = len(idx)
    out = np.empty((num_pos, 2, 3, STAMP_PX, STAMP_PX), F32)
    snr, mag = np.zeros((num_pos, 2, 3)), np.zeros((num_pos, 2))
    flux = np.zeros(num_pos)
    for rep in range(2):
        if num_pos == 0:
            break
        unit_box, mag[:, rep] = _unit_arcs(pop, idx, rep)
        unit = np.zeros((num_pos, 3, STAMP_PX, STAMP_PX), F32)
        unit[:, :, BOX_LO : BOX_LO + BOX_PX, BOX_LO : BOX_LO + BOX_PX] = unit_box
        unit = convolve_stamps(unit, kernels, spectra)
        if rep == 0:
            flux = _flux_for_snr(unit[:, 1], var[idx, 1], gain[idx, 1], pop["snr_target"][idx])
        arc = unit * flux.astype(F32)[:, None, None, None]
        arc_var = np.maximum(arc, 0) / gain[idx].astype(F32)[:, :, None, None]
        out[:, rep] = base[idx] + arc + rng.standard_normal(arc.shape, dtype=F32) * np.sqrt(arc_var)
        snr[:, rep] = (arc / np.sqrt(var[idx] + arc_var)).max(axis=(2, 3))
    src_mag = 22.5 - 2.5 * np.log10(np.maximum(flux, 1e-30))
    return RenderedBatch(
        base=base,
        pos_index=idx,
        positives=out,
        arc_snr=snr[:, :, 1],
        magnification=mag,
        src_mag_r=src_mag,
        arc_snr_g=snr[:, :, 0],
        arc_snr_z=snr[:, :, 2],
    )
