"""Realism table of a written mock survey's lenses, next to the reference numbers.

    python -m haloscope.preprocess.sim.realism --data DATA [--json out.json]

Reads the parquet like any consumer (one row per distinct lens image: galaxy x replicate, good
cutouts only) and prints the quantities of ``docs/mock_survey.md``: magnification, source - lens
magnitude, lensed source magnitude, arc/lens flux ratio, source sizes, the arc-SNR mix (peak and
integrated), the detectable fraction (``arc_snr >= 5`` and ``theta_E / psfsize_r >= 0.8``, the
original's proxy) and the image multiplicity of the source centres (re-traced from the table's
lens and source columns by :func:`count_images`).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from haloscope.preprocess.sim.physics import shear_deflection, sie_deflection

__all__ = ["count_images", "load_lenses", "realism", "main"]

_COLS = [
    "mock_galaxy_id",
    "replicate",
    "theta_e_arcsec",
    "lens_e",
    "lens_phi_rad",
    "shear",
    "shear_phi_rad",
    "src_x_arcsec",
    "src_y_arcsec",
    "src_mag_r",
    "src_dmag",
    "src_reff_arcsec",
    "lens_mag_r",
    "magnification",
    "arc_snr",
    "arc_snr_sum",
    "arc_lens_flux_ratio",
    "tangential_stretch",
    "psfsize_r",
    "psfdepth_r",
    "psfsize_g",
    "psfsize_z",
    "psfdepth_g",
    "psfdepth_z",
]


def count_images(
    lens: tuple[float, float, float, float, float], beta: tuple[float, float], num: int = 400
) -> int:
    """Number of images of a point source behind an SIE + shear lens.

    Each cell of an image-plane grid (+-3.2 theta_E) is split into two triangles that are
    mapped to the source plane; an image lies in every triangle that then contains ``beta``.
    Cells at the singular centre (< 0.05 theta_E) are skipped (an SIE has no central image).

    Args:
        lens: ``(theta_e, q, phi, gamma1, gamma2)``.
        beta: source position (arcsec).
        num: grid points per axis.
    """
    theta_e, q, phi, g1, g2 = lens
    g = np.linspace(-3.2 * theta_e, 3.2 * theta_e, num) + 1e-4 * theta_e
    x, y = np.meshgrid(g, g)
    ax, ay = sie_deflection(x, y, np.float64(theta_e), np.float64(q), np.float64(phi))
    sx, sy = shear_deflection(x, y, g1, g2)
    bx, by = x - ax - sx - beta[0], y - ay - sy - beta[1]
    core = np.hypot(x[:-1, :-1], y[:-1, :-1]) < 0.05 * theta_e
    corners = ((0, 0), (0, 1), (1, 1), (1, 0))
    count = 0
    for tri in ((0, 1, 2), (0, 2, 3)):
        vx = [bx[dy : num - 1 + dy, dx : num - 1 + dx] for dy, dx in (corners[t] for t in tri)]
        vy = [by[dy : num - 1 + dy, dx : num - 1 + dx] for dy, dx in (corners[t] for t in tri)]
        cross = [vx[i] * vy[(i + 1) % 3] - vy[i] * vx[(i + 1) % 3] for i in range(3)]
        same = ((cross[0] > 0) & (cross[1] > 0) & (cross[2] > 0)) | (
            (cross[0] < 0) & (cross[1] < 0) & (cross[2] < 0)
        )
        count += int((same & ~core).sum())
    return count


def load_lenses(data: str) -> dict[str, np.ndarray]:
    """One row per distinct lens image (galaxy x replicate) with a good grz cutout."""
    dset = ds.dataset(data, format="parquet", partitioning="hive")
    flt = (pc.field("is_control") == 0) & (pc.field("cutout_ok") == 1)
    table = dset.to_table(columns=_COLS, filter=flt)
    key = table["mock_galaxy_id"].to_numpy() * 2 + table["replicate"].to_numpy()
    _, first = np.unique(key, return_index=True)
    return {c: table[c].to_numpy(zero_copy_only=False)[first].astype(float) for c in _COLS}


def _pct(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [5, 25, 50, 75, 95])
    return {
        k: round(float(v), 3) for k, v in zip(("p5", "p25", "p50", "p75", "p95"), q, strict=True)
    }


def _multiplicity(lens: dict[str, np.ndarray], num: int) -> dict[str, float]:
    """Shares of source centres with 1, 2, 3 and 4+ images over the first ``num`` lens images."""
    counts = []
    for i in range(min(num, len(lens["magnification"]))):
        e = lens["lens_e"][i]
        g1 = lens["shear"][i] * np.cos(2 * lens["shear_phi_rad"][i])
        g2 = lens["shear"][i] * np.sin(2 * lens["shear_phi_rad"][i])
        config = (lens["theta_e_arcsec"][i], (1 - e) / (1 + e), lens["lens_phi_rad"][i], g1, g2)
        beta = (lens["src_x_arcsec"][i], lens["src_y_arcsec"][i])
        counts.append(count_images(config, beta, num=240))
    c = np.array(counts)
    return {
        "n": len(c),
        "single": float(np.mean(c <= 1)),
        "double": float(np.mean(c == 2)),
        "three": float(np.mean(c == 3)),
        "quad_or_more": float(np.mean(c >= 4)),
    }


def realism(data: str, multiplicity_sample: int = 400) -> dict:
    """The realism figures of ``docs/mock_survey.md`` for the survey at ``data``."""
    lens = load_lenses(data)
    snr, snr_sum = lens["arc_snr"], lens["arc_snr_sum"]
    lensed = lens["src_mag_r"] - 2.5 * np.log10(lens["magnification"])
    resolved = lens["theta_e_arcsec"] / lens["psfsize_r"] >= 0.8
    edges = [0, 2, 5, 10, 20, 50, np.inf]
    sum_edges = [0, 3, 8, 20, 60, 200, np.inf]
    return {
        "lens_images": len(snr),
        "magnification": _pct(lens["magnification"]),
        "src_mag_r": _pct(lens["src_mag_r"]),
        "src_minus_lens_r": _pct(lens["src_dmag"]),
        "lensed_src_mag_r": _pct(lensed),
        "arc_lens_flux_ratio": _pct(lens["arc_lens_flux_ratio"]),
        "src_reff_arcsec": _pct(lens["src_reff_arcsec"]),
        "tangential_stretch": _pct(lens["tangential_stretch"]),
        "arc_snr": _pct(snr),
        "arc_snr_bins": _shares(snr, edges),
        "arc_snr_sum": _pct(snr_sum),
        "arc_snr_sum_bins": _shares(snr_sum, sum_edges),
        "detectable_fraction": round(float(np.mean((snr >= 5) & resolved)), 4),
        "theta_e_over_psf_ge_0.8": round(float(np.mean(resolved)), 4),
        "multiplicity": _multiplicity(lens, multiplicity_sample),
        "psfsize_median": {b: float(np.median(lens[f"psfsize_{b}"])) for b in "grz"},
        "psfdepth_median": {b: float(np.median(lens[f"psfdepth_{b}"])) for b in "grz"},
    }


def _shares(values: np.ndarray, edges: list[float]) -> dict[str, float]:
    counts, _ = np.histogram(values, edges)
    names = [f"[{a:g},{b:g})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return {n: round(float(c) / len(values), 4) for n, c in zip(names, counts, strict=True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="root of a written mock survey")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = realism(args.data)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
