"""PNG plots of the evaluation report (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from haloscope.atomic import atomic_path  # noqa: E402
from haloscope.evaluate.metrics import roc_curve  # noqa: E402
from haloscope.evaluate.scores import ScoresFrame  # noqa: E402

# the one stamp composite, shared with the search gallery (re-exported for the report)
from haloscope.infer.composite import save_stamp_png, stamp_rgb  # noqa: E402

__all__ = [
    "plot_completeness",
    "plot_completeness_curve",
    "plot_roc",
    "plot_score_hist",
    "save_stamp_png",
    "stamp_rgb",
]

logger = logging.getLogger(__name__)


def _save(fig: Any, path: Path) -> Path:
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")  # the temporary name has no .png suffix
    finally:
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
    ax.set(
        xscale="log",
        xlim=(lowest, 1),
        ylim=(0, 1.01),
        xlabel="false-positive rate (controls)",
        ylabel="true-positive rate (completeness)",
        title="ROC (threshold: score >= t)",
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_completeness(
    rows: Sequence[dict[str, Any]],
    column: str,
    fpr_targets: Sequence[float],
    path: Path,
    xlabel: str,
) -> Path | None:
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
    ax.set(
        ylim=(-0.02, 1.02),
        xlabel=xlabel,
        ylabel="completeness (TPR)",
        title=f"completeness vs {column} (thresholds from all controls)",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_completeness_curve(
    curve: dict[str, Any], thresholds: Mapping[str, float], path: Path
) -> Path:
    """Completeness against one column with binomial CI bands, one line per FPR threshold.

    Args:
        curve: one entry of ``completeness_curves(...)["curves"]`` (see
            :mod:`haloscope.evaluate.curves`).
        thresholds: FPR (as in ``curve["fpr"]``) -> score threshold, for the legend.
        path: PNG to write.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.array(curve["x"])
    for fpr, entry in curve["fpr"].items():
        (line,) = ax.plot(
            x, entry["value"], marker="o", ms=3, label=f"FPR {fpr} (score >= {thresholds[fpr]:.4g})"
        )
        ax.fill_between(x, entry["ci_low"], entry["ci_high"], color=line.get_color(), alpha=0.2)
    ax.set(
        xscale=curve["scale"],
        ylim=(-0.02, 1.02),
        xlabel=curve["label"],
        ylabel="completeness (lenses passing)",
        title=(
            f"completeness vs {curve['label']}\n(thresholds from all controls; "
            f"{sum(curve['n'])} lenses, bands: CI)"
        ),
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower right")
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
        ax.hist(
            values[mask],
            bins=bins,
            histtype="step",
            lw=1.4 if "all" in name or name == "lenses" else 0.8,
            label=f"{name} ({int(mask.sum())})",
        )
    ax.set(yscale="log", xlabel=frame.rank_by, ylabel="count", title=f"{frame.rank_by} per class")
    ax.legend(fontsize=7)
    return _save(fig, path)
