"""Independent lens and confuser sets for a transfer check, rendered with lenstronomy.

A model trained on the mock survey must also find lenses that the mock did not draw. This
module is a *second renderer*, deliberately sharing no code and no parameterisation with the
mock simulator (the other modules of this package): lenstronomy's SIE + SHEAR ray tracing and
Sersic light, its own pixel grid, a Moffat PSF kernel written here, per-band noise from the
DR10 depth relation of ``reference/science.md`` section 2.4, and its own population ranges. It writes the data
contract's layout (``region_split=test`` only), so ``haloscope infer --data`` scores it like
any survey table; the sets are never converted into training shards.

Rows:

- ``lens``: LRG (Sersic n 3-6) + SIE (theta_E uniform 0.8-2.6") + shear; a Sersic source
  (n 0.5-2, R_e 0.08-1.2") with 0-3 bluer Gaussian clumps, placed uniformly in a disk of
  0.6 theta_E around the caustic centre (mostly multiply imaged); source r magnitude uniform
  20.5-24.5.
- ``control`` (``control_kind`` ordinary): the LRG alone.
- confusers, made by generators unlike the mock's: a field galaxy 1-3.5" away drawn from
  field-galaxy ranges (``blue_companion``), a thin edge-on disk (``edge_on``), an irregular
  shapelet galaxy (``merger``) and a star blend (``star_blend``).

Truth columns follow the contract (``theta_e_arcsec``, ``arc_snr`` = peak of the noise-free r
arc over the coadd sky sigma, ``src_dmag``, ``src_reff_arcsec``, ...) plus
``magnification``, ``arc_snr_sum`` and ``renderer = "lenstronomy"``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from haloscope.atomic import atomic_path
from haloscope.preprocess.sim.table import encode_npz  # the contract's stamp format only

__all__ = ["TransferConfig", "KINDS", "render_system", "write_transfer_sets", "SCHEMA"]

log = logging.getLogger(__name__)

PIX = 0.262  # arcsec per pixel (DR10 coadds)
NPIX = 64
BANDS = ("g", "r", "z")
MOFFAT_BETA = 3.5
PSFSIZE_PER_MOFFAT_FWHM = 1.2325  # science.md 2.3: psfsize is the Gaussian-equivalent FWHM
# electrons per nmgy of a 3-pass coadd: DECam 44/53/39 e-/s per nmgy x 3 x (70, 50, 100) s
# (science.md 2.4, cross-check paragraph); used only for the objects' own shot noise
GAIN_E_PER_NMGY = np.array([9300.0, 8000.0, 11800.0])
KINDS = ("lens", "ordinary", "blue_companion", "edge_on", "merger", "star_blend")
CONFUSER_KINDS = KINDS[2:]


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """How many systems of each kind, and the seed."""

    lenses: int = 2000
    """Injected lenses (SIE + shear, Sersic + clumps source)."""
    controls: int = 1000
    """Plain LRG controls."""
    confusers: int = 1000
    """Confusers, split evenly over blue_companion, edge_on, merger and star_blend."""
    seed: int = 0
    """Seed of every random draw; the output is a pure function of (config, seed)."""

    def __post_init__(self) -> None:
        for name in ("lenses", "controls", "confusers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")

    def kinds(self) -> list[str]:
        """The kind of every system, in output order."""
        conf = [CONFUSER_KINDS[i % len(CONFUSER_KINDS)] for i in range(self.confusers)]
        return ["lens"] * self.lenses + ["ordinary"] * self.controls + conf


_F64, _I32, _STR = pa.float64(), pa.int32(), pa.string()
SCHEMA = pa.schema(
    [
        ("task_id", _STR),
        ("ra", _F64),
        ("dec", _F64),
        ("brickname", _STR),
        ("is_control", _I32),
        ("cutout_ok", _I32),
        ("bandset", _STR),
        ("theta_e_arcsec", _F64),
        ("psf_fwhm_used_r", _F64),
        ("psfsize_g", _F64),
        ("psfsize_r", _F64),
        ("psfsize_z", _F64),
        ("psfdepth_g", _F64),
        ("psfdepth_r", _F64),
        ("psfdepth_z", _F64),
        ("arc_snr", _F64),
        ("arc_snr_sum", _F64),
        ("magnification", _F64),
        ("src_dmag", _F64),
        ("src_reff_arcsec", _F64),
        ("lens_mag_r", _F64),
        ("src_mag_r", _F64),
        ("control_kind", _STR),
        ("renderer", _STR),
        ("stamp_npz", pa.binary()),
    ]
)


# --- the pixel grid, PSF and noise -------------------------------------------------------


def _image_data():
    # NOTE: lenstronomy is optional (a test extra) and this module is on `transfer-sets --help`.
    from lenstronomy.Data.imaging_data import ImageData

    # pixel (32, 32) is the coordinate origin, +x along the column index, +y along the row
    return ImageData(
        image_data=np.zeros((NPIX, NPIX)),
        background_rms=1.0,
        exposure_time=np.inf,
        ra_at_xy_0=-32 * PIX,
        dec_at_xy_0=-32 * PIX,
        transform_pix2angle=np.diag([PIX, PIX]),
    )


def moffat_kernel(fwhm_arcsec: float, beta: float = MOFFAT_BETA, half: int = 15) -> np.ndarray:
    """Unit-sum Moffat kernel ((2 half + 1) square) sampled at pixel centres, 3x3 subsampled."""
    alpha = fwhm_arcsec / PIX / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    sub = (np.arange(3) - 1) / 3.0
    axis = (np.arange(-half, half + 1)[:, None] + sub[None, :]).reshape(-1)
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    k = (1.0 + r2 / alpha**2) ** (-beta)
    n = 2 * half + 1
    k = k.reshape(n, 3, n, 3).sum(axis=(1, 3))
    return k / k.sum()


def sky_sigma(depth_mag: np.ndarray, psfsize: np.ndarray) -> np.ndarray:
    """Per-pixel sky sigma in nmgy: 1/sigma^2 = psfdepth * NEA_px (science.md 2.4)."""
    flux5 = 10.0 ** (-0.4 * (np.asarray(depth_mag) - 22.5))
    ivar = (5.0 / flux5) ** 2
    nea_px = 4.0 * np.pi * (np.asarray(psfsize) / (2.3548 * PIX)) ** 2
    return 1.0 / np.sqrt(ivar * nea_px)


def _nmgy(mag: float) -> float:
    return float(10.0 ** (-0.4 * (mag - 22.5)))


# --- one system ----------------------------------------------------------------------------


def _lrg(rng: np.random.Generator) -> dict:
    r = float(np.clip(rng.normal(19.9, 0.6), 17.8, 21.5))
    q = rng.uniform(0.55, 1.0)
    phi = rng.uniform(0, np.pi)
    e = (1 - q) / (1 + q)
    return {
        "mag": np.array([r + rng.normal(1.6, 0.15), r, r - rng.normal(0.95, 0.12)]),
        "R_sersic": float(np.clip(rng.lognormal(np.log(1.2), 0.35), 0.4, 3.5)),
        "n_sersic": rng.uniform(3.0, 6.0),
        "e1": e * np.cos(2 * phi),
        "e2": e * np.sin(2 * phi),
    }


def _conditions(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    psf = np.clip(np.array([1.45, 1.30, 1.20]) * np.exp(rng.normal(0, 0.18)), 0.9, 2.6)
    psf = psf * np.exp(rng.normal(0, 0.04, 3))
    deep = np.array([25.3, 25.1, 23.9]) if rng.uniform() < 0.3 else np.array([24.8, 24.2, 23.3])
    depth = deep + rng.normal(0, 0.25) + rng.normal(0, 0.08, 3)
    return psf, depth


class _Renderer:
    """lenstronomy models built once per worker (building them dominates a single render)."""

    def __init__(self) -> None:
        # NOTE: lenstronomy imported on use, as in _image_data.
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel

        data = _image_data()
        num = {"supersampling_factor": 3}
        psf = _no_psf()
        self.lens_model = LensModel(["SIE", "SHEAR"])
        self.sersic = LightModel(["SERSIC_ELLIPSE"])
        self.clump = LightModel(["GAUSSIAN"])
        self.shapelets = LightModel(["SHAPELETS"])
        self.arc_diffuse = ImageModel(data, psf, self.lens_model, self.sersic, kwargs_numerics=num)
        self.arc_clump = ImageModel(data, psf, self.lens_model, self.clump, kwargs_numerics=num)
        self.unlensed = ImageModel(data, psf, None, None, self.sersic, kwargs_numerics=num)
        self.irregular = ImageModel(data, psf, None, None, self.shapelets, kwargs_numerics=num)
        self.point = ImageModel(data, psf, None, None, self.clump, kwargs_numerics=num)

    def sersic_image(self, flux: float, **kw) -> np.ndarray:
        kwargs = [{"amp": 1.0, **kw}]
        unit = self.sersic.total_flux(kwargs)[0]
        kwargs[0]["amp"] = flux / unit
        return self.unlensed.image(kwargs_lens_light=kwargs, unconvolved=True)


def _no_psf():
    # NOTE: lenstronomy imported on use, as in _image_data.
    from lenstronomy.Data.psf import PSF

    return PSF(psf_type="NONE")


def _source(rng: np.random.Generator, theta_e: float) -> dict:
    radius = 0.6 * theta_e * np.sqrt(rng.uniform())
    ang = rng.uniform(0, 2 * np.pi)
    q, phi = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
    e = (1 - q) / (1 + q)
    reff = float(np.clip(rng.lognormal(np.log(0.3), 0.5), 0.08, 1.2))
    num_clumps = int(rng.integers(0, 4))
    return {
        "x": radius * np.cos(ang),
        "y": radius * np.sin(ang),
        "reff": reff,
        "n": rng.uniform(0.5, 2.0),
        "e1": e * np.cos(2 * phi),
        "e2": e * np.sin(2 * phi),
        "mag_r": rng.uniform(20.5, 24.5),
        "gr": rng.uniform(0.1, 0.7),
        "rz": rng.uniform(0.0, 0.6),
        "clump_frac": rng.uniform(0.1, 0.4) if num_clumps else 0.0,
        "clumps": [
            (rng.normal(0, reff), rng.normal(0, reff), rng.uniform(0.04, 0.12))
            for _ in range(num_clumps)
        ],
    }


def _band_scale(mag_r: float, gr: float, rz: float) -> np.ndarray:
    """Flux per band (nmgy) of an object of r magnitude ``mag_r`` and colours g-r, r-z."""
    return np.array([_nmgy(mag_r + gr), _nmgy(mag_r), _nmgy(mag_r - rz)])


def _arc(r: _Renderer, rng: np.random.Generator, lens: dict, theta_e: float) -> tuple:
    """Noise-free, unconvolved lensed source per band (3, 64, 64) and its truth."""
    src = _source(rng, theta_e)
    shear = rng.rayleigh(0.03)
    sphi = rng.uniform(0, np.pi)
    kw_lens = [
        {"theta_E": theta_e, "e1": lens["e1"], "e2": lens["e2"], "center_x": 0.0, "center_y": 0.0},
        {"gamma1": shear * np.cos(2 * sphi), "gamma2": shear * np.sin(2 * sphi)},
    ]
    kw_src = {
        "R_sersic": src["reff"],
        "n_sersic": src["n"],
        "e1": src["e1"],
        "e2": src["e2"],
        "center_x": src["x"],
        "center_y": src["y"],
    }
    unit = r.sersic.total_flux([{"amp": 1.0, **kw_src}])[0]
    diffuse = r.arc_diffuse.image(
        kwargs_lens=kw_lens, kwargs_source=[{**kw_src, "amp": 1.0 / unit}], unconvolved=True
    )
    images = np.zeros((3, NPIX, NPIX))
    f = src["clump_frac"]
    images += (1 - f) * _band_scale(src["mag_r"], src["gr"], src["rz"])[:, None, None] * diffuse
    intrinsic = 1.0 - f
    lensed_r = (1 - f) * diffuse.sum()
    for dx, dy, sigma in src["clumps"]:
        w = f / len(src["clumps"])
        kw_c = [{"amp": 1.0, "sigma": sigma, "center_x": src["x"] + dx, "center_y": src["y"] + dy}]
        clump = r.arc_clump.image(kwargs_lens=kw_lens, kwargs_source=kw_c, unconvolved=True)
        clump_unit = r.clump.total_flux(kw_c)[0]
        scale = _band_scale(src["mag_r"], src["gr"] - 0.3, src["rz"] - 0.2) * w / clump_unit
        images += scale[:, None, None] * clump
        intrinsic += w
        lensed_r += w * clump.sum() / clump_unit
    mu = lensed_r / intrinsic  # within the stamp (no flux leaves it for theta_E <= 2.6")
    return images, {"mu": float(mu), "src_mag_r": src["mag_r"], "src_reff": src["reff"]}


def _confuser(r: _Renderer, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Noise-free, unconvolved (3, 64, 64) light of one confuser beside the LRG."""
    dist, ang = rng.uniform(1.0, 3.5), rng.uniform(0, 2 * np.pi)
    x, y = dist * np.cos(ang), dist * np.sin(ang)
    phi = rng.uniform(0, np.pi)
    if kind == "blue_companion":  # a field galaxy: r 20-23.5, blue, n 0.7-2.5
        q = rng.uniform(0.3, 1.0)
        e = (1 - q) / (1 + q)
        img = r.sersic_image(
            1.0,
            R_sersic=float(np.clip(rng.lognormal(np.log(0.45), 0.4), 0.1, 1.5)),
            n_sersic=rng.uniform(0.7, 2.5),
            e1=e * np.cos(2 * phi),
            e2=e * np.sin(2 * phi),
            center_x=x,
            center_y=y,
        )
        scale = _band_scale(rng.uniform(20.0, 23.5), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.6))
    elif kind == "edge_on":  # thin disk, often overlapping the LRG
        q = rng.uniform(0.08, 0.22)
        e = (1 - q) / (1 + q)
        img = r.sersic_image(
            1.0,
            R_sersic=rng.uniform(0.6, 1.6),
            n_sersic=1.0,
            e1=e * np.cos(2 * phi),
            e2=e * np.sin(2 * phi),
            center_x=0.5 * x,
            center_y=0.5 * y,
        )
        scale = _band_scale(rng.uniform(19.5, 22.5), rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.7))
    elif kind == "merger":  # irregular shapelet galaxy, tidal-looking structure
        n_max = 6
        coeffs = rng.normal(0, 1, (n_max + 1) * (n_max + 2) // 2)
        coeffs[0] = 3.0
        kw = [
            {
                "amp": coeffs,
                "beta": rng.uniform(0.3, 0.7),
                "n_max": n_max,
                "center_x": x,
                "center_y": y,
            }
        ]
        img = np.clip(r.irregular.image(kwargs_lens_light=kw, unconvolved=True), 0, None)
        img = img / max(img.sum(), 1e-12)
        scale = _band_scale(rng.uniform(20.0, 22.5), rng.uniform(0.3, 1.2), rng.uniform(0.2, 0.8))
    else:  # star_blend: a point at pixel resolution
        kw = [{"amp": 1.0, "sigma": 0.02, "center_x": x, "center_y": y}]
        img = r.point.image(kwargs_lens_light=kw, unconvolved=True)
        img = img / max(img.sum(), 1e-12)
        scale = _band_scale(rng.uniform(17.5, 21.5), rng.uniform(0.3, 1.4), rng.uniform(0.0, 0.6))
    return scale[:, None, None] * img[None]


def _observe(
    model: np.ndarray, arc: np.ndarray, psf: np.ndarray, depth: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """PSF-convolved lens + arc with sky and Poisson noise: ``(image (3, H, W) float32, sky sigma
    per band)``."""
    # NOTE: scipy.signal takes ~1 s to import: kept off `transfer-sets --help`.
    from scipy.signal import fftconvolve

    kernels = [moffat_kernel(p / PSFSIZE_PER_MOFFAT_FWHM) for p in psf]
    conv = lambda im: np.stack([fftconvolve(im[b], kernels[b], mode="same") for b in range(3)])  # noqa: E731
    model, arc = conv(model), conv(arc)
    sigma = sky_sigma(depth, psf)
    total = model + arc
    var = sigma[:, None, None] ** 2 + np.clip(total, 0, None) / GAIN_E_PER_NMGY[:, None, None]
    image = (total + rng.standard_normal(total.shape) * np.sqrt(var)).astype(np.float32)
    return image, sigma


def _truth_columns(kind: str, arc: np.ndarray, sigma: np.ndarray, truth: dict, lens: dict) -> dict:
    """The arc's truth columns of a lens row (None/0 for the others)."""
    if kind == "lens":
        sig_r = sigma[1]
        return dict(
            arc_snr=float(arc[1].max() / sig_r),
            arc_snr_sum=_snr_sum(arc[1], sig_r),
            magnification=truth["mu"],
            src_dmag=truth["src_mag_r"] - float(lens["mag"][1]),
            src_reff_arcsec=truth["src_reff"],
            src_mag_r=truth["src_mag_r"],
        )
    else:
        return dict(
            arc_snr=None,
            arc_snr_sum=None,
            magnification=None,
            src_dmag=0.0,
            src_reff_arcsec=0.0,
            src_mag_r=None,
        )


def render_system(renderer: _Renderer, kind: str, seed: int) -> dict:
    """Render one system of ``kind``; returns its contract row (without ra/dec/task_id)."""
    rng = np.random.default_rng(seed)
    lens = _lrg(rng)
    psf, depth = _conditions(rng)
    lrg = renderer.sersic_image(
        1.0,
        R_sersic=lens["R_sersic"],
        n_sersic=lens["n_sersic"],
        e1=lens["e1"],
        e2=lens["e2"],
        center_x=0.0,
        center_y=0.0,
    )
    model = np.stack([_nmgy(m) * lrg for m in lens["mag"]])
    arc = np.zeros_like(model)
    truth: dict = {}
    theta_e = 0.0
    if kind == "lens":
        theta_e = rng.uniform(0.8, 2.6)
        arc, truth = _arc(renderer, rng, lens, theta_e)
    elif kind != "ordinary":
        model = model + _confuser(renderer, rng, kind)
    image, sigma = _observe(model, arc, psf, depth, rng)
    stamp = encode_npz({f"image_{band}": image[i] for i, band in enumerate(BANDS)})
    row = {
        "is_control": int(kind != "lens"),
        "cutout_ok": 1,
        "bandset": "grz",
        "theta_e_arcsec": theta_e,
        "psf_fwhm_used_r": float(psf[1]) if kind == "lens" else None,
        "psfsize_g": float(psf[0]),
        "psfsize_r": float(psf[1]),
        "psfsize_z": float(psf[2]),
        "psfdepth_g": float(depth[0]),
        "psfdepth_r": float(depth[1]),
        "psfdepth_z": float(depth[2]),
        "lens_mag_r": float(lens["mag"][1]),
        "renderer": "lenstronomy",
        "control_kind": None if kind == "lens" else kind,
        "stamp_npz": stamp,
    }
    row.update(_truth_columns(kind, arc, sigma, truth, lens))
    return row


def _snr_sum(arc_r: np.ndarray, sigma: float, frac: float = 0.01) -> float:
    """Integrated SNR over the pixels holding the arc: sum(signal) / sqrt(sum(var)).

    Pixels count when their noise-free arc exceeds ``frac`` of its peak (the original sums over
    all good pixels of a real cutout, where the arc mask is implicit in the noise).
    """
    mask = arc_r > frac * arc_r.max()
    return float(arc_r[mask].sum() / (sigma * np.sqrt(mask.sum())))


# --- the whole set -------------------------------------------------------------------------


def _system_seeds(cfg: TransferConfig, num: int) -> list[int]:
    root = np.random.SeedSequence([cfg.seed, 0x7A5F])
    return [int(s.generate_state(1, np.uint64)[0]) for s in root.spawn(num)]


def _render_range(args: tuple[TransferConfig, int, int]) -> list[dict]:
    cfg, lo, hi = args
    renderer = _Renderer()
    kinds, seeds = cfg.kinds(), _system_seeds(cfg, len(cfg.kinds()))
    rows = []
    for i in range(lo, hi):
        row = render_system(renderer, kinds[i], seeds[i])
        ra, dec = 200.0 + (i % 1000) * 1e-3, -20.0 + (i // 1000) * 1e-3
        row.update(
            ra=ra,
            dec=dec,
            brickname=f"{int(ra * 10):04d}m{int(-dec * 10):03d}",
            task_id=hashlib.sha256(f"transfer:{cfg.seed}:{i}".encode()).hexdigest(),
        )
        rows.append(row)
    return rows


def _chunks(num: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, num, size):
        yield lo, min(num, lo + size)


def write_transfer_sets(
    cfg: TransferConfig, out: Path, workers: int = 1, progress: bool = True
) -> dict[str, int]:
    """Render every system and write ``out/region_split=test/part-00000.parquet``.

    The rows are identical for any ``workers`` (each system has its own seed).

    Returns:
        Rows written per kind.
    """
    num = len(cfg.kinds())
    jobs = [(cfg, lo, hi) for lo, hi in _chunks(num, 100)]
    rows: list[dict] = []
    bar = tqdm(total=num, unit="sys", desc="transfer sets", disable=not progress)
    if workers <= 1:
        for job in jobs:
            rows += _render_range(job)
            bar.update(job[2] - job[1])
    else:
        with ProcessPoolExecutor(workers) as pool:
            for job, part in zip(jobs, pool.map(_render_range, jobs), strict=True):
                rows += part
                bar.update(job[2] - job[1])
    bar.close()
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    dest = Path(out) / "region_split=test" / "part-00000.parquet"
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    counts: dict[str, int] = {}
    for kind in cfg.kinds():
        counts[kind] = counts.get(kind, 0) + 1
    return counts
