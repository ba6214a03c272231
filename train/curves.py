"""``RUN/curves.png``: the run's training curves, redrawn from ``metrics.jsonl`` at every validation.

Four panels over epochs: train loss (every step, its epoch means, and the val loss), learning
rate, the val metrics (AUROC, TPR at FPR 1e-3 and 1e-4, best epoch marked) and the fraction of
each step spent waiting for the loader. matplotlib's Agg canvas is used directly (no pyplot,
no global backend), and the PNG is written atomically, so a reader (the eval report) never
sees half a picture. ``MetricsWriter`` (main rank only) asks a child process to redraw:
``python -m haloscope.train.curves --serve RUN_DIR`` redraws once per line read from stdin
and answers one line, ``ok`` or the error. A process, not a thread: matplotlib holds the GIL
for the whole redraw, and a thread drawing beside the training loop slowed the loop's small
per-step calls about twentyfold (``bench/gil.py``), so the GPU went without work.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from haloscope.atomic import atomic_path

__all__ = ["CURVES_NAME", "read_metrics", "write_curves", "serve"]

CURVES_NAME = "curves.png"
_MAX_POINTS = 2000  # per-step series are averaged into at most this many bins
_VAL_METRICS = (
    ("val/auroc", "AUROC"),
    ("val/tpr@fpr1e-3", "TPR @ FPR 1e-3"),
    ("val/tpr@fpr1e-4", "TPR @ FPR 1e-4"),
)
# the detectable subset's (train.validate): drawn when the val split has such lenses
_DET_METRICS = (
    ("val/det_tpr@fpr1e-3", "detectable TPR @ FPR 1e-3"),
    ("val/det_tpr@fpr1e-4", "detectable TPR @ FPR 1e-4"),
)


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and val records of a ``metrics.jsonl``, in step order.

    A resumed run repeats the steps between its ``last.pt`` and the kill: the later record
    of a ``global_step`` wins. A torn last line (a killed writer) is skipped.
    """
    train: dict[int, dict[str, Any]] = {}
    val: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("global_step") is not None and row.get("kind") in ("train", "val"):
            (train if row["kind"] == "train" else val)[int(row["global_step"])] = row
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def _values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """Column ``key`` as float64, NaN where missing or null."""
    values = [row.get(key) for row in rows]
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _train_epochs(train: list[dict[str, Any]]) -> np.ndarray:
    """Fractional epoch of every train record: epoch + step / steps in that epoch."""
    steps_in = defaultdict(int)
    for row in train:
        steps_in[row["epoch"]] = max(steps_in[row["epoch"]], int(row["step"]))
    return np.array([r["epoch"] + r["step"] / max(steps_in[r["epoch"]], 1) for r in train])


def _binned(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``_MAX_POINTS`` points: means of consecutive equal-size bins."""
    if len(x) <= _MAX_POINTS:
        return x, y
    edges = np.linspace(0, len(x), _MAX_POINTS + 1).astype(int)
    return (
        np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]),
        np.array(
            [
                np.nanmean(y[a:b]) if np.isfinite(y[a:b]).any() else np.nan
                for a, b in zip(edges[:-1], edges[1:], strict=True)
            ]
        ),
    )


def _epoch_means(train: list[dict[str, Any]], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` over each epoch's steps, placed at the epoch's end."""
    epochs = np.array([r["epoch"] for r in train])
    ends = np.unique(epochs)
    means = [
        np.nanmean(y[epochs == e]) if np.isfinite(y[epochs == e]).any() else np.nan for e in ends
    ]
    return ends + 1.0, np.array(means)


def _plot_loss(ax: Any, train: list[dict], val: list[dict], x: np.ndarray) -> None:
    loss = _values(train, "train/loss")
    ax.plot(*_binned(x, loss), lw=0.6, alpha=0.35, color="C0", label="train (step)")
    ax.plot(*_epoch_means(train, loss), "o-", ms=3, color="C0", label="train (epoch mean)")
    if val:
        ax.plot(
            _values(val, "epoch") + 1,
            _values(val, "val/loss"),
            "s--",
            ms=3,
            color="C3",
            label="val",
        )
    finite = np.concatenate([loss, _values(val, "val/loss")])
    if np.isfinite(finite).any() and np.nanmin(finite) > 0:
        ax.set_yscale("log")
    ax.set(title="loss", ylabel="loss")
    ax.legend(fontsize=7)


def _plot_val(ax: Any, val: list[dict]) -> None:
    epochs = _values(val, "epoch") + 1
    for i, (key, label) in enumerate(_VAL_METRICS):
        ax.plot(epochs, _values(val, key), "o-", ms=3, color=f"C{i + 1}", label=label)
    for i, (key, label) in enumerate(_DET_METRICS):
        values = _values(val, key)
        if np.isfinite(values).any():
            ax.plot(epochs, values, "s--", ms=3, color=f"C{i + 2}", label=label)
    best = [e for e, b in zip(epochs, _values(val, "val/is_best"), strict=True) if b == 1]
    if best:
        ax.axvline(best[-1], ls=":", color="k", lw=1, label=f"best.pt (epoch {best[-1] - 1:.0f})")
    ax.set(title="validation", ylabel="metric", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)


def _plot_steps(ax: Any, train: list[dict], x: np.ndarray, key: str, title: str) -> None:
    y = _values(train, key)
    ax.plot(*_binned(x, y), lw=0.8, color="C0", label="step")
    if key == "perf/data_wait_frac":
        ax.plot(*_epoch_means(train, y), "o-", ms=3, color="C1", label="epoch mean")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    ax.set(title=title)


def _figure(train: list[dict], val: list[dict], title: str) -> Any:
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (loss, lr), (metrics, wait) = fig.subplots(2, 2, sharex=True)
    x = _train_epochs(train)
    _plot_loss(loss, train, val, x)
    _plot_steps(lr, train, x, "train/lr", "learning rate")
    _plot_val(metrics, val)
    _plot_steps(wait, train, x, "perf/data_wait_frac", "loader wait (fraction of each step)")
    for ax in (metrics, wait):
        ax.set_xlabel("epochs completed (epoch e ends at e + 1)")
    for ax in (loss, lr, metrics, wait):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def write_curves(run_dir: str | Path) -> Path:
    """Redraw ``run_dir/curves.png`` from ``run_dir/metrics.jsonl``; returns its path.

    Raises:
        OSError: naming the file that cannot be read or written.
    """
    run_dir = Path(run_dir)
    train, val = read_metrics(run_dir / "metrics.jsonl")
    last = train[-1] if train else {"epoch": 0, "global_step": 0}
    title = (
        f"{run_dir.name}: {len(val)} validation(s), epoch {last['epoch']}, "
        f"global step {last['global_step']}"
    )
    fig = _figure(train, val, title)
    path = run_dir / CURVES_NAME
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def serve(run_dir: str | Path) -> int:
    """Redraw ``run_dir/curves.png`` once per line of stdin; answer ``ok`` or the error, one
    line each, on stdout. Ends at a ``quit`` line or the end of stdin (the writer died; a
    loader worker forked after this process started may hold stdin open a little longer)."""
    try:
        os.nice(10)  # the training process and its loader come first
    except OSError:
        pass
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        try:
            write_curves(run_dir)
            answer = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure is one line for the writer
            answer = " ".join(str(exc).split()) or type(exc).__name__
        print(answer, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--serve":
        print("usage: python -m haloscope.train.curves --serve RUN_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[2]))
