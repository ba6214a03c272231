"""Analytic physics of the mock survey: photometry, Sersic light, SIE + shear, Moffat PSF, noise.

Every function is vectorised over a leading batch axis and works in arcsec on the sky.
Conventions (documented in ``docs/mock_survey.md``):

* Pixel grid: 64x64 at 0.262"/px; pixel index ``(iy, ix)`` has its centre at
  ``x = (ix - 32) * 0.262``, ``y = (iy - 32) * 0.262``, so the lens sits exactly at the centre of
  pixel (32, 32). Axis 0 of an image is y, axis 1 is x.
* Ellipses use the product-average (circularised) radius ``R = sqrt(q x'^2 + y'^2 / q)`` with
  ``x'`` along the major axis at position angle ``phi`` (radians from +x towards +y); this is
  lenstronomy's ``SERSIC_ELLIPSE`` / ``SIE`` convention, so a Sersic half-light radius is the
  circularised one and the SIE Einstein radius is the product-averaged one (``b = theta_E sqrt(q)``).
* Fluxes are nanomaggies (AB zero point 22.5); surface brightness is nmgy/arcsec^2.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sp_fft

__all__ = [
    "PIXEL_SCALE",
    "STAMP_PX",
    "CENTER_PX",
    "MOFFAT_BETA",
    "mag_to_nmgy",
    "nmgy_to_mag",
    "pixel_grid",
    "sersic_bn",
    "sersic_flux_per_ie",
    "elliptical_radius",
    "sersic_shape",
    "sie_deflection",
    "sie_max_deflection",
    "shear_deflection",
    "lens_eigenvalues",
    "moffat_fwhm_from_psfsize",
    "moffat_kernels",
    "convolve_stamps",
    "convolve_full",
    "kernel_spectra",
    "sky_sigma_nmgy",
    "bin_image",
]

PIXEL_SCALE = 0.262  # arcsec per pixel (DECam native, DR10 coadds)
STAMP_PX = 64
CENTER_PX = 32
MOFFAT_BETA = 3.5
_GAUSS_FWHM_PER_SIGMA = 2.3548


def mag_to_nmgy(mag: np.ndarray | float) -> np.ndarray:
    """AB magnitude -> flux in nanomaggies (zero point 22.5)."""
    return np.power(10.0, -0.4 * (np.asarray(mag, dtype=np.float64) - 22.5))


def nmgy_to_mag(flux: np.ndarray | float) -> np.ndarray:
    """Flux in nanomaggies -> AB magnitude; non-positive flux gives +inf."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 22.5 - 2.5 * np.log10(np.maximum(flux, 1e-300)), np.inf)


def pixel_grid(num_px: int, oversample: int, center_px: float = CENTER_PX) -> np.ndarray:
    """1-D sub-pixel centre coordinates in arcsec for pixels ``0..num_px-1``.

    Args:
        num_px: number of pixels along the axis.
        oversample: sub-samples per pixel (1 = pixel centres).
        center_px: pixel index whose centre is coordinate 0.

    Returns:
        float64 array of length ``num_px * oversample``; pixel ``i`` owns entries
        ``i*oversample .. (i+1)*oversample-1``.
    """
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    pix = np.arange(num_px, dtype=np.float64)[:, None] + sub[None, :]
    return ((pix - center_px) * PIXEL_SCALE).reshape(-1)


def sersic_bn(n: np.ndarray | float) -> np.ndarray:
    """Sersic b_n from the Ciotti & Bertin (1999) expansion (accurate to <1e-4 for n >= 0.36)."""
    n = np.asarray(n, dtype=np.float64)
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def sersic_flux_per_ie(r_e: np.ndarray, n: np.ndarray, b_n: np.ndarray) -> np.ndarray:
    """Total flux of a Sersic profile with unit surface brightness at R_e.

    ``F / I_e = 2 pi n R_e^2 e^{b_n} b_n^{-2n} Gamma(2n)``, independent of q in the
    product-average radius convention.
    """
    n = np.asarray(n, dtype=np.float64)
    lgam = np.array([math.lgamma(v) for v in np.atleast_1d(2.0 * n).ravel()]).reshape(n.shape)
    log_f = np.log(2.0 * np.pi * n * np.asarray(r_e, np.float64) ** 2) + b_n - 2 * n * np.log(b_n)
    return np.exp(log_f + lgam)


def elliptical_radius(x: np.ndarray, y: np.ndarray, q: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Product-average elliptical radius ``sqrt(q x'^2 + y'^2/q)`` (broadcasting)."""
    c, s = np.cos(phi), np.sin(phi)
    xr = c * x + s * y
    yr = -s * x + c * y
    return np.sqrt(q * xr * xr + yr * yr / q)


def sersic_shape(radius: np.ndarray, r_e: np.ndarray, n: np.ndarray, b_n: np.ndarray) -> np.ndarray:
    """Sersic surface brightness with ``I(R_e) = 1``: ``exp(-b_n [(R/R_e)^{1/n} - 1])``."""
    ratio = np.maximum(radius / r_e, 1e-6)
    return np.exp(-b_n * (np.exp(np.log(ratio) / n) - 1.0))


def sie_deflection(
    x: np.ndarray,
    y: np.ndarray,
    theta_e: np.ndarray,
    q: np.ndarray,
    phi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Deflection of a singular isothermal ellipsoid centred at the origin.

    Standard normalisation (Kormann et al. 1994; lenstronomy ``SIE``): ``b = theta_E sqrt(q)``,
    ``psi = sqrt(q^2 x'^2 + y'^2)``, ``alpha_x' = b/sqrt(1-q^2) arctan(sqrt(1-q^2) x'/psi)``,
    ``alpha_y' = b/sqrt(1-q^2) artanh(sqrt(1-q^2) y'/psi)``, rotated back to the sky frame.

    Args:
        x, y: image-plane coordinates in arcsec (any broadcastable shape).
        theta_e: product-averaged Einstein radius in arcsec.
        q: mass axis ratio in (0, 1]; q >= 1 is clamped to 1 - 1e-6 (the SIS limit).
        phi: position angle of the major axis in radians.

    Returns:
        ``(alpha_x, alpha_y)`` in arcsec, dtype of ``x``.
    """
    q64 = np.minimum(np.asarray(q, dtype=np.float64), 1.0 - 1e-6)
    # NOTE: 1-q^2 is formed in float64 per galaxy so q -> 1 keeps its precision in float32 maps.
    root = np.sqrt((1.0 - q64) * (1.0 + q64)).astype(x.dtype)
    b = (np.asarray(theta_e, np.float64) * np.sqrt(q64)).astype(x.dtype)
    qd = q64.astype(x.dtype)
    c, s = np.cos(phi).astype(x.dtype), np.sin(phi).astype(x.dtype)
    xr = c * x + s * y
    yr = -s * x + c * y
    # NOTE: in place, in the order of the formulas above, on arrays of the output's shape
    # (root spans theta_E's axes too)
    shape = np.broadcast_shapes(np.shape(xr), root.shape, b.shape)
    new = lambda: np.empty(shape, x.dtype)  # noqa: E731
    psi = np.multiply(qd * qd, xr, out=new())
    psi *= xr
    psi += yr * yr
    np.sqrt(psi, out=psi)
    np.maximum(psi, np.asarray(1e-9, dtype=x.dtype), out=psi)
    amp = b / root
    ax_r = np.multiply(root, xr, out=new())
    ax_r /= psi
    np.arctan(ax_r, out=ax_r)
    ax_r *= amp
    ay_r = np.multiply(root, yr, out=new())
    ay_r /= psi
    np.clip(ay_r, -0.9999999, 0.9999999, out=ay_r)
    np.arctanh(ay_r, out=ay_r)
    ay_r *= amp
    alpha_x = np.multiply(c, ax_r, out=psi)
    alpha_x -= s * ay_r
    np.multiply(s, ax_r, out=ax_r)
    np.multiply(c, ay_r, out=ay_r)
    ax_r += ay_r
    return alpha_x[()], ax_r[()]  # [()]: a scalar for scalar input, as numpy's operators give


def sie_max_deflection(q: np.ndarray) -> np.ndarray:
    """Largest SIE deflection in units of theta_E (along the minor axis; 1 for q -> 1).

    ``|alpha| <= sqrt(q)/sqrt(1-q^2) artanh(sqrt(1-q^2))``, the value of ``alpha_y'`` on the
    minor axis (artanh >= arctan), so every image of a source at ``beta`` lies within
    ``(|beta| + theta_E max|alpha|) / (1 - |gamma|)`` of the lens.
    """
    q = np.minimum(np.asarray(q, np.float64), 1.0 - 1e-6)
    root = np.sqrt((1.0 - q) * (1.0 + q))
    return np.sqrt(q) / root * np.arctanh(root)


def shear_deflection(
    x: np.ndarray, y: np.ndarray, gamma1: np.ndarray, gamma2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """External shear deflection ``(g1 x + g2 y, g2 x - g1 y)`` about the origin."""
    return gamma1 * x + gamma2 * y, gamma2 * x - gamma1 * y


def lens_eigenvalues(
    x: np.ndarray,
    y: np.ndarray,
    lens: tuple[np.ndarray, ...],
    step: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the lens-equation Jacobian ``d beta / d theta`` of SIE + shear at (x, y).

    The tangential eigenvalue ``1 - kappa - gamma`` is the smaller one, the radial
    ``1 - kappa + gamma`` the larger; tangential and radial stretches are their inverse moduli.

    Args:
        x, y: float64 image-plane positions (arcsec), any shape.
        lens: ``(theta_e, q, phi, gamma1, gamma2)`` broadcastable against ``x``.
        step: central-difference step in arcsec.

    Returns:
        ``(lambda_t, lambda_r)`` float64.
    """
    theta_e, q, phi, g1, g2 = lens

    def beta(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ax, ay = sie_deflection(px, py, theta_e, q, phi)
        sx, sy = shear_deflection(px, py, g1, g2)
        return px - ax - sx, py - ay - sy

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    bxp, byp = beta(x + step, y)
    bxm, bym = beta(x - step, y)
    a11, a21 = (bxp - bxm) / (2 * step), (byp - bym) / (2 * step)
    bxp, byp = beta(x, y + step)
    bxm, bym = beta(x, y - step)
    a12, a22 = (bxp - bxm) / (2 * step), (byp - bym) / (2 * step)
    half_trace, off = 0.5 * (a11 + a22), 0.5 * (a12 + a21)  # symmetric (from a potential)
    root = np.sqrt(0.25 * (a11 - a22) ** 2 + off**2)
    return half_trace - root, half_trace + root


def moffat_fwhm_from_psfsize(psfsize: np.ndarray | float, beta: float = MOFFAT_BETA) -> np.ndarray:
    """Moffat FWHM whose noise-equivalent area matches a Legacy Survey ``psfsize``.

    ``psfsize`` is the Gaussian-equivalent FWHM of the NEA (legacypipe coadds.py):
    ``psfsize = 2.3548 sqrt(NEA / 4 pi)``. For a Moffat, ``NEA = pi alpha^2 (2 beta - 1)/(beta - 1)^2``
    and ``FWHM = 2 alpha sqrt(2^{1/beta} - 1)``; for beta = 3.5 the ratio is psfsize/1.2325.
    """
    fwhm_per_alpha = 2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0)
    nea_per_alpha2 = math.pi * (2 * beta - 1) / (beta - 1) ** 2
    alpha = (
        np.asarray(psfsize, np.float64)
        / _GAUSS_FWHM_PER_SIGMA
        * math.sqrt(4 * math.pi / nea_per_alpha2)
    )
    return alpha * fwhm_per_alpha


def moffat_kernels(
    fwhm_px: np.ndarray, beta: float = MOFFAT_BETA, size: int = 33, oversample: int = 2
) -> np.ndarray:
    """Pixel-integrated Moffat kernels, centred on the middle pixel and normalised to sum 1.

    Args:
        fwhm_px: (K,) FWHM in pixels.
        beta: Moffat index.
        size: odd kernel width in pixels; at most the stamp size (the original's bug B1 built
            kernels wider than the stamp and crashed).
        oversample: sub-samples per pixel axis used to integrate over each pixel.

    Returns:
        float32 array (K, size, size).
    """
    if size % 2 == 0 or size > STAMP_PX:
        raise ValueError(f"kernel size must be odd and <= {STAMP_PX}, got {size}")
    alpha = np.asarray(fwhm_px, np.float32) / np.float32(2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    sub = ((np.arange(oversample) + 0.5) / oversample - 0.5).astype(np.float32)
    axis = (np.arange(size, dtype=np.float32)[:, None] - size // 2 + sub[None, :]).reshape(-1)
    # the sub-sample axis is symmetric about 0: evaluate one quadrant and mirror it
    n_axis = len(axis)
    half = axis[n_axis // 2 :]
    r2 = half[:, None] ** 2 + half[None, :] ** 2
    inv_a2 = (1.0 / alpha**2)[:, None, None]
    quad = np.exp(np.float32(-beta) * np.log1p(r2[None] * inv_a2))
    if oversample == 2:
        k = _mirror(_quadrant_pixel_sums(quad))
    else:
        skip = n_axis % 2  # an odd axis holds 0 once
        top = np.concatenate([quad[:, ::-1][:, : len(half) - skip], quad], axis=1)
        prof = np.concatenate([top[:, :, ::-1][:, :, : len(half) - skip], top], axis=2)
        k = prof.reshape(-1, size, oversample, size, oversample).sum(axis=(2, 4))
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def _quadrant_pixel_sums(quad: np.ndarray) -> np.ndarray:
    """Pixel sums of 2x2 sub-samples for the pixels ``(c + my, c + mx)``, ``my, mx >= 0``.

    ``quad`` (K, S, S) holds the profile at sub-sample offsets ``0.25 + 0.5 j`` from the
    central pixel's centre; pixel ``c + m`` holds samples ``2m - 1`` and ``2m`` (the central one
    sample 0 and its mirror image). The sums are added in the order of numpy's ``sum`` over the
    block axes of the mirrored profile (pairs along x, then the two rows, from +0), and each
    mirrored pixel adds the same numbers in swapped pairs, so mirroring the result gives the
    same bits as summing the whole mirrored profile.
    """
    half_px = quad.shape[-1] // 2 + 1
    hi = 2 * np.arange(half_px)
    lo = np.maximum(hi - 1, 0)
    cols = quad[:, :, lo] + quad[:, :, hi]
    out = cols[:, lo] + cols[:, hi]
    out += 0.0
    return out


def _mirror(quadrant: np.ndarray) -> np.ndarray:
    """(K, h, h) pixels ``c..c+h-1`` of a kernel symmetric about pixel c -> (K, 2h-1, 2h-1)."""
    top = np.concatenate([quadrant[:, :0:-1], quadrant], axis=1)
    # C order: the normalising sum over the kernel adds in memory order
    return np.ascontiguousarray(np.concatenate([top[:, :, :0:-1], top], axis=2))


# NOTE: scipy.fft transforms float32 in single precision (numpy.fft computes in double and
# casts back), twice as fast for the stamp convolutions; both are pocketfft, single-threaded.


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (sizes pocketfft handles fast)."""
    size = n
    while True:
        m = size
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return size
        size += 1


def _rfft2_padded(images: np.ndarray, n_fft: int) -> np.ndarray:
    """``rfft2(images, s=(n_fft, n_fft))`` of (..., H, W) images, without transforming the
    zero rows of the padding: pocketfft's rfft2 is the rfft of each row and then the fft of
    each column, and an all-zero row transforms to zeros (the same bits)."""
    return sp_fft.fft(sp_fft.rfft(images, n=n_fft, axis=-1), n=n_fft, axis=-2)


def _irfft2_crop(spectra: np.ndarray, n_fft: int, start: int, size: int) -> np.ndarray:
    """``irfft2(spectra, s=(n_fft, n_fft))[..., start:start+size, start:start+size]`` as
    contiguous float32, inverting only the rows that are kept; ``spectra`` is overwritten.

    pocketfft's irfft2 is the inverse fft of each column, the inverse rfft of each row and then
    one multiplication by ``1 / n_fft^2`` (rounded from long double, as pocketfft does).
    """
    rows = sp_fft.ifft(spectra, axis=-2, norm="forward", overwrite_x=True)
    rows = rows[..., start : start + size, :]
    full = sp_fft.irfft(rows, n=n_fft, axis=-1, norm="forward")[..., start : start + size]
    out = np.ascontiguousarray(full, dtype=np.float32)
    out *= np.float32(1 / np.longdouble(n_fft * n_fft))
    return out


def kernel_spectra(kernels: np.ndarray, image_px: int = STAMP_PX) -> np.ndarray:
    """Real FFTs of centred kernels, zero-padded for a linear convolution of ``image_px`` stamps.

    Args:
        kernels: (..., K, K) float32 with odd K.
        image_px: size of the images they will convolve.

    Returns:
        complex64 spectra (..., N, N//2 + 1) with ``N = fft size >= image_px + K - 1``.
    """
    n_fft = _fft_size(image_px + kernels.shape[-1] - 1)
    return _rfft2_padded(kernels, n_fft)


def convolve_stamps(
    images: np.ndarray, kernels: np.ndarray, spectra: np.ndarray | None = None
) -> np.ndarray:
    """Linear (zero-padded, not circular) convolution of each image with its own kernel.

    The kernel centre ``(K//2, K//2)`` maps an image pixel onto itself: both arrays are
    zero-padded to one FFT size ``>= H + K - 1`` (so nothing wraps around) and the full linear
    convolution is cropped at offset ``K//2``. There is no ``ifftshift`` of a corner-placed
    kernel (the original's bug B2).

    Args:
        images: (..., H, W) float32 with H == W.
        kernels: (..., K, K) float32, broadcastable against ``images`` on leading axes.
        spectra: optional precomputed ``kernel_spectra(kernels)`` (reused across calls).

    Returns:
        float32 array with the shape of ``images``.
    """
    h, w = images.shape[-2:]
    k = kernels.shape[-1]
    if spectra is None:
        spectra = kernel_spectra(kernels, h)
    n_fft = spectra.shape[-2]
    product = _rfft2_padded(images, n_fft)
    product *= spectra
    return _irfft2_crop(product, n_fft, k // 2, h)


def convolve_full(images: np.ndarray, spectra: np.ndarray, kernel_px: int) -> np.ndarray:
    """Full linear convolution (size ``H + K - 1``) of each image with its kernel spectrum.

    Unlike :func:`convolve_stamps` nothing is cropped, so light the PSF spreads beyond the
    image's edge is kept (used for arcs rendered on a box smaller than the stamp).

    Args:
        images: (..., H, H) float32.
        spectra: ``kernel_spectra(kernels, H)`` for (..., K, K) kernels.
        kernel_px: K.

    Returns:
        float32 (..., H + K - 1, H + K - 1); index ``j`` is image pixel ``j - K // 2``.
    """
    n_fft = spectra.shape[-2]
    size = images.shape[-1] + kernel_px - 1
    product = _rfft2_padded(images, n_fft)
    product *= spectra
    return _irfft2_crop(product, n_fft, 0, size)


def sky_sigma_nmgy(psfdepth_mag: np.ndarray, psfsize_arcsec: np.ndarray) -> np.ndarray:
    """Per-pixel sky noise from a 5-sigma point-source depth and a PSF size.

    Legacy Survey relation (dr10/nea.rst): ``1/sigma_pix^2 = psfdepth * NEA_px`` with
    ``psfdepth = 25 / f_5sigma^2`` in nmgy^-2 and ``NEA_px = 4 pi (psfsize / (2.3548 * 0.262))^2``.
    """
    f5 = mag_to_nmgy(psfdepth_mag)
    ivar = 25.0 / f5**2
    nea_px = (
        4.0 * math.pi * (np.asarray(psfsize_arcsec) / (_GAUSS_FWHM_PER_SIGMA * PIXEL_SCALE)) ** 2
    )
    return 1.0 / np.sqrt(ivar * nea_px)


def bin_image(fine: np.ndarray, oversample: int) -> np.ndarray:
    """Average ``oversample x oversample`` blocks of the last two axes (pixel integration)."""
    if oversample == 1:
        return fine
    if oversample == 2 and fine.dtype.kind == "f":
        return _bin2(fine)
    *lead, hh, ww = fine.shape
    shaped = fine.reshape(*lead, hh // oversample, oversample, ww // oversample, oversample)
    return shaped.mean(axis=(-3, -1))


def _bin2(fine: np.ndarray) -> np.ndarray:
    """2x2 block mean with the additions in the order of numpy's ``mean`` over the block axes
    (the two rows' pair sums added to a +0 start), ~9x faster than the strided reduction."""
    out = fine[..., 0::2, 0::2] + fine[..., 0::2, 1::2]
    out += fine[..., 1::2, 0::2] + fine[..., 1::2, 1::2]
    out += 0.0  # NOTE: numpy's sum starts at +0, so an all -0 block averages to +0
    out /= 4
    return out
