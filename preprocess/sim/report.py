"""Figures and the difficulty check of ``docs/mock_survey.md``, computed from a written survey.

    python -m haloscope.preprocess.sim.report --data DATA --out-dir docs/img --json report.json

Reads the parquet like any consumer (hive dataset, ``np.load`` of ``stamp_npz``), so it checks the
written files, not the simulator's internals. The difficulty check fits a logistic regression
(scikit-learn, a test-only dependency) on central-aperture fluxes of the train split and scores the
test split: it must be far from perfect, and confusers must score above ordinary controls.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from haloscope.preprocess.sim.config import CONTROL_KINDS

__all__ = [
    "load_unique",
    "aperture_features",
    "difficulty_check",
    "plot_examples",
    "plot_confusers",
    "plot_distributions",
    "main",
]

logger = logging.getLogger(__name__)
_COLS = [
    "is_control",
    "control_kind",
    "arc_snr",
    "theta_e_arcsec",
    "psf_fwhm_used_r",
    "psfsize_r",
    "psfdepth_r",
    "src_mag_r",
    "arc_snr_sum",
    "magnification",
    "arc_lens_flux_ratio",
    "src_reff_arcsec",
    "mock_galaxy_id",
    "replicate",
    "region_split",
    "cutout_ok",
    "bandset",
    "mock_defect",
]


def load_unique(data: str, examples_per_class: int = 6) -> dict[str, np.ndarray]:
    """One row per distinct image (galaxy for controls, galaxy x replicate for lenses), good rows only.

    Streams record batches, so memory holds aperture features and a few example stamps only.

    Returns:
        Column arrays, ``features`` (N, 9) from :func:`aperture_features`, and ``examples``
        (list of (class label, (3, 64, 64) stamp)).
    """
    dset = ds.dataset(data, format="parquet", partitioning="hive")
    flt = (
        (pc.field("cutout_ok") == 1)
        & (pc.field("bandset") == "grz")
        & pc.field("mock_defect").is_null()
    )
    seen: set[int] = set()
    cols: dict[str, list] = {c: [] for c in _COLS}
    feats, examples, counts = [], [], {}
    for batch in dset.to_batches(columns=[*_COLS, "stamp_npz"], filter=flt, batch_size=512):
        gal, rep, ctrl = (
            batch.column(c).to_numpy() for c in ("mock_galaxy_id", "replicate", "is_control")
        )
        keys = gal * 2 + np.where(ctrl == 1, 0, rep)
        keep = [i for i, k in enumerate(keys.tolist()) if not (k in seen or seen.add(k))]
        if not keep:
            continue
        sub = batch.take(keep)
        stamps = np.stack([_decode(b) for b in sub.column("stamp_npz").to_pylist()])
        feats.append(aperture_features(stamps))
        for c in _COLS:
            cols[c].append(sub.column(c).to_numpy(zero_copy_only=False))
        for i in range(len(keep)):
            label = _example_class(
                sub.column("control_kind")[i].as_py(), sub.column("arc_snr")[i].as_py()
            )
            if label and counts.get(label, 0) < examples_per_class:
                counts[label] = counts.get(label, 0) + 1
                examples.append((label, stamps[i]))
    out = {c: np.concatenate(v) for c, v in cols.items()}
    out["features"] = np.concatenate(feats)
    out["examples"] = examples  # type: ignore[assignment]
    return out


# Lens rows of the example grid: peak arc SNR bins, brightest first.
LENS_BINS = ((20.0, "lens, arc SNR >= 20"), (8.0, "lens, SNR 8-20"), (5.0, "lens, SNR 5-8"))
LENS_BINS += ((2.0, "lens, SNR 2-5"), (0.0, "lens, SNR < 2"))


def _example_class(kind: str | None, snr: float | None) -> str | None:
    if kind is not None:
        return f"control: {kind}"
    if snr is None:
        return None
    return next(label for lo, label in LENS_BINS if snr >= lo)


def _decode(blob: bytes) -> np.ndarray:
    z = np.load(io.BytesIO(blob))
    return np.stack([z["image_g"], z["image_r"], z["image_z"]])


def aperture_features(stamps: np.ndarray) -> np.ndarray:
    """Per band fluxes in r<3, 3-6 and 6-10 px annuli about (32, 32), asinh-scaled: (N, 9)."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    masks = [r < 3, (r >= 3) & (r < 6), (r >= 6) & (r < 10)]
    feats = [stamps[:, b][:, m].sum(axis=1) for b in range(3) for m in masks]
    return np.arcsinh(np.stack(feats, axis=1) / 0.05)


def difficulty_check(u: dict[str, np.ndarray]) -> dict:
    """Logistic regression on aperture fluxes (train -> test) plus a metadata-only shortcut audit."""
    # NOTE: scikit-learn is a test extra: only this check needs it.
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = (u["is_control"] == 0).astype(int)
    x = u["features"]
    meta = np.stack([u["psfsize_r"], u["psfdepth_r"]], axis=1)
    tr, te = u["region_split"] == "train", u["region_split"] == "test"
    res: dict = {"num_train": int(tr.sum()), "num_test": int(te.sum())}
    for name, feats in (("aperture_lr", x), ("meta_only_lr", meta)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
            feats[tr], y[tr]
        )
        score = model.predict_proba(feats[te])[:, 1]
        res[f"{name}_auc"] = round(float(roc_auc_score(y[te], score)), 4)
        if name == "aperture_lr":
            kinds = u["control_kind"][te]
            ctrl_scores = {
                k: score[(y[te] == 0) & (kinds == k)] for k in np.unique(kinds[y[te] == 0])
            }
            res["mean_score_by_control_kind"] = {
                str(k): round(float(v.mean()), 4) for k, v in ctrl_scores.items()
            }
            res["mean_score_lenses"] = round(float(score[y[te] == 1].mean()), 4)
            thr = np.quantile(score[y[te] == 0], 0.99)
            res["tpr_at_fpr_1e-2"] = round(float((score[y[te] == 1] > thr).mean()), 4)
            ordinary = (y[te] == 0) & (kinds == "ordinary")
            confuser = (y[te] == 0) & (kinds != "ordinary")
            res["confuser_vs_ordinary_auc"] = round(
                float(roc_auc_score(confuser[ordinary | confuser], score[ordinary | confuser])), 4
            )
            snr = u["arc_snr"][te]
            res["auc_by_arc_snr"] = {}
            for lo, hi in ((0, 2), (2, 8), (8, 20), (20, np.inf)):
                sel = (y[te] == 0) | ((snr >= lo) & (snr < hi))
                if y[te][sel].min() == y[te][sel].max():
                    continue  # no lens in this bin
                res["auc_by_arc_snr"][f"[{lo},{hi})"] = round(
                    float(roc_auc_score(y[te][sel], score[sel])), 4
                )
    return res


def _rgb(img: np.ndarray) -> np.ndarray:
    """g, r, z stamp -> asinh-stretched RGB (z red, r green, g blue)."""
    scale = np.array([1.0, 0.7, 0.45])[:, None, None]  # roughly equalise the red LRG
    x = np.nan_to_num(img[::-1] * scale)
    return np.clip(np.arcsinh(x / 0.01) / np.arcsinh(1.0 / 0.01) * 1.6, 0, 1).transpose(1, 2, 0)


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    # NOTE: imported on the first plot: the backend choice is process-wide, not an import effect.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(u: dict[str, np.ndarray], labels: list[str], path: Path, per_row: int) -> None:
    """One row of ``per_row`` example stamps per class label."""
    plt = _pyplot()
    rows = [(lab, [img for name, img in u["examples"] if name == lab]) for lab in labels]
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 1.1, len(rows) * 1.15))
    for i, (label, imgs) in enumerate(rows):
        for j in range(per_row):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(imgs):
                ax.imshow(_rgb(imgs[j]), origin="lower", interpolation="nearest")
        axes[i, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.2, wspace=0.03, hspace=0.03)
    fig.savefig(path, dpi=72, bbox_inches="tight")
    plt.close(fig)


def plot_examples(u: dict[str, np.ndarray], path: Path, per_row: int = 6) -> None:
    """Grid of example stamps: lenses per peak arc-SNR bin, then ordinary controls."""
    _grid(u, [label for _, label in LENS_BINS] + ["control: ordinary"], path, per_row)


def plot_confusers(u: dict[str, np.ndarray], path: Path, per_row: int = 6) -> None:
    """Grid of example stamps, one row per confuser kind (``CONTROL_KINDS`` after ordinary)."""
    _grid(u, [f"control: {k}" for k in CONTROL_KINDS[1:]], path, per_row)


def plot_distributions(u: dict[str, np.ndarray], path: Path) -> None:
    """Histograms of theta_E, theta_E/PSF, arc SNR, psfsize_r, psfdepth_r with real-survey numbers."""
    plt = _pyplot()
    lens = u["is_control"] == 0
    psf = np.where(u["psf_fwhm_used_r"] > 0, u["psf_fwhm_used_r"], u["psfsize_r"])
    panels = [
        (
            "theta_E [arcsec] (lenses)",
            u["theta_e_arcsec"][lens],
            np.linspace(0.4, 2.6, 23),
            [],
            "grid_sota: 0.5-2.5",
        ),
        (
            "theta_E / PSF FWHM (lenses)",
            u["theta_e_arcsec"][lens] / psf[lens],
            np.linspace(0, 3, 31),
            [0.5],
            "cut 0.5",
        ),
        (
            "log10 arc SNR (peak pixel, r)",
            np.log10(u["arc_snr"][lens].astype(float)),
            np.linspace(-0.5, 2.6, 32),
            np.log10([0.8, 2, 8, 20]),
            "orig. mix 40/40/15/5 %",
        ),
        (
            "psfsize_r [arcsec]",
            u["psfsize_r"],
            np.linspace(0.7, 2.7, 41),
            [0.754, 1.305, 1.600],
            "v3: 0.754 / 1.305 / 1.600",
        ),
        (
            "psfdepth_r [AB mag]",
            u["psfdepth_r"],
            np.linspace(22.5, 26.5, 41),
            [24.2, 25.1, 24.55],
            "DR10 peaks 24.2, 25.1; v3 median 24.55",
        ),
        (
            "src_mag_r, intrinsic (lenses)",
            u["src_mag_r"][lens].astype(float),
            np.linspace(21.5, 27, 23),
            [23.5, 25],
            "2.10: 23.5-25 (detectable)",
        ),
        (
            "log10 arc_snr_sum (LensPop S/N)",
            np.log10(u["arc_snr_sum"][lens].astype(float)),
            np.linspace(0, 3, 31),
            np.log10([8, 60]),
            "2.10: most at 8-60",
        ),
        (
            "log10 magnification (lenses)",
            np.log10(u["magnification"][lens].astype(float)),
            np.linspace(0.3, 1.8, 31),
            np.log10([5.0]),
            "injections median 5.65",
        ),
        (
            "source R_e [arcsec] (lenses)",
            u["src_reff_arcsec"][lens].astype(float),
            np.linspace(0, 1.3, 27),
            [0.1, 1.2],
            "2.8/2.11: ~0.1-1.2",
        ),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(9, 7.5))
    for ax, (title, vals, bins, lines, note) in zip(axes.ravel(), panels, strict=False):
        vals = vals[np.isfinite(vals)]
        ax.hist(vals, bins=bins, color="tab:blue", alpha=0.8)
        for v in lines:
            ax.axvline(v, color="tab:red", ls="--", lw=1)
        ax.set_title(title, fontsize=8)
        ax.text(
            0.98,
            0.95,
            f"real: {note}\nmock median {np.median(vals):.2f}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=6,
        )
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Write the figures and the difficulty JSON for a survey directory."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", required=True, help="survey root written by haloscope simulate")
    p.add_argument("--out-dir", default="docs/img", help="where the PNGs go")
    p.add_argument("--json", default=None, help="write the difficulty numbers here")
    args = p.parse_args(argv)
    u = load_unique(args.data)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_examples(u, out / "mock_examples.png")
    plot_confusers(u, out / "mock_confusers.png")
    plot_distributions(u, out / "mock_distributions.png")
    res = difficulty_check(u)
    snr = u["arc_snr"][u["is_control"] == 0].astype(float)
    edges = [0, 2, 5, 10, 20, np.inf]
    counts, _ = np.histogram(snr, edges)
    res["snr_bin_fractions"] = {
        f"[{lo:g},{hi:g})": round(float(c) / max(1, len(snr)), 4)
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
