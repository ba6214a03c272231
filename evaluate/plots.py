"""PNG plots of the evaluation report (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from haloscope.evaluate.metrics import roc_curve  # noqa: E402
from haloscope.evaluate.scores import ScoresFrame  # noqa: E402

__all__ = ["plot_completeness", "plot_gallery", "plot_roc", "plot_score_hist"]

logger = logging.getLogger(__name__)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(frames: Mapping[str, ScoresFrame], fpr_targets: Sequence[float], path: Path) -> Path:
    """ROC curves on a log-FPR axis (exact, tie-aware), one line per model.

    Args:
        frames: model name -> scores.
        fpr_targets: drawn as dotted vertical lines.
        path: PNG to write.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    lowest = 1.0
    for name, frame in frames.items():
        fpr, tpr, _ = roc_curve(frame.labels, frame.ranking)
        num_neg = int((frame.labels == 0).sum())
        lowest = min(lowest, 0.5 / num_neg)
        # fpr = 0 cannot sit on a log axis: draw it at half a control
        ax.step(np.maximum(fpr, 0.5 / num_neg), tpr, where="post", label=name)
    for target in fpr_targets:
        ax.axvline(target, color="grey", lw=0.6, ls=":")
    ax.set(xscale="log", xlim=(lowest, 1), ylim=(0, 1.01), xlabel="false-positive rate (controls)",
           ylabel="true-positive rate (completeness)", title="ROC (threshold: score >= t)")  # fmt: skip
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_completeness(rows: Sequence[dict[str, Any]], column: str, fpr_targets: Sequence[float],
                      path: Path, xlabel: str) -> Path | None:  # fmt: skip
    """Completeness (TPR at the global FPR thresholds) per bin of ``column`` with CIs.

    Args:
        rows: stratified rows (``StratifiedResult.rows``).
        column: strata column, e.g. ``theta_over_psf``.
        fpr_targets: which FPR operating points to draw.
        path: PNG to write.
        xlabel: axis label.

    Returns:
        The path, or None when the column has no positive strata.
    """
    strata = [r for r in rows if r["column"] == column and r["kind"] == "positives"]
    if not strata:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(strata))
    for j, target in enumerate(fpr_targets):
        entries = [next(e for e in r["tpr@fpr"] if e["target"] == target) for r in strata]
        y = np.array([e["value"] for e in entries], dtype=float)
        err = np.array([[e["value"] - e["ci_low"], e["ci_high"] - e["value"]] for e in entries]).T
        ax.errorbar(x + 0.08 * j, y, yerr=err, marker="o", capsize=3, label=f"FPR {target:g}")
    labels = [f"{r['stratum'][r['stratum'].find('[') :]}\nP={r['P']}" for r in strata]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(ylim=(-0.02, 1.02), xlabel=xlabel, ylabel="completeness (TPR)",
           title=f"completeness vs {column} (thresholds from all controls)")  # fmt: skip
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_score_hist(frame: ScoresFrame, path: Path) -> Path:
    """Histograms of the ranked value per class (and per control kind), log y axis."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    values = frame.ranking
    bins = np.linspace(values.min(), values.max(), 60) if values.max() > values.min() else 10
    groups: dict[str, np.ndarray] = {
        "lenses": frame.labels == 1,
        "controls (all)": frame.labels == 0,
    }
    kinds = frame.columns.get("control_kind")
    if kinds is not None:
        for kind in sorted({k for k in kinds[frame.labels == 0].tolist() if k}):
            groups[f"controls: {kind}"] = (frame.labels == 0) & (kinds == kind)
    for name, mask in groups.items():
        ax.hist(values[mask], bins=bins, histtype="step", lw=1.4 if "all" in name or name == "lenses"
                else 0.8, label=f"{name} ({int(mask.sum())})")  # fmt: skip
    ax.set(yscale="log", xlabel=frame.rank_by, ylabel="count", title=f"{frame.rank_by} per class")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _rgb(stamp: np.ndarray) -> np.ndarray:
    # normalised units (robust sigmas, clipped +-10): asinh stretch, z,r,g -> R,G,B
    img = np.arcsinh(np.clip(stamp[::-1], 0, None)) / math.asinh(10.0)
    return np.clip(np.transpose(img, (1, 2, 0)), 0, 1)


def plot_gallery(stamps: np.ndarray, titles: Sequence[str], path: Path, title: str) -> Path:
    """A grid of RGB stamps (bands z, r, g as R, G, B) with one caption each."""
    num = len(stamps)
    cols = min(num, 6)
    rows = max(1, math.ceil(num / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, stamp, caption in zip(axes.ravel(), stamps, titles, strict=False):
        ax.imshow(_rgb(stamp), origin="lower")
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
