"""Validation over the whole val split (sharded over ranks, gathered) and early stopping.

Each rank scores its share of the val split in fp32 (no autocast) with the reader in exact
eval mode, through the trainer's eval step (``train.step.EvalStep``: one CUDA graph per
batch on CUDA, eager on CPU; the reader's batches all have the same shape, padding rows
marked ``valid == False``). The logits stay on the device until the last batch; then the
padding rows are dropped, logits and labels from every rank are gathered, and every rank
computes the same metrics with ``haloscope.evaluate.metrics`` (exact tie handling), so the
early-stopping decision is identical on all ranks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from haloscope.errors import DataError
from haloscope.evaluate import metrics as roc
from haloscope.train.dist import DistEnv, all_gather_1d
from haloscope.train.step import EvalStep

__all__ = [
    "MONITOR",
    "MONITORS",
    "score_batches",
    "compute_val_metrics",
    "validate",
    "EarlyStopping",
]

log = logging.getLogger(__name__)
MONITOR = "val/tpr@fpr1e-4"
"""The default early-stopping and best-checkpoint metric (the seed's; ties broken by val/auroc)."""
MONITORS: dict[str, str] = {
    "tpr@fpr1e-4": "val/tpr@fpr1e-4",
    "tpr@fpr1e-3": "val/tpr@fpr1e-3",
    "auroc": "val/auroc",
}
"""``--monitor`` choices -> metric keys."""
MIN_FALSE_POSITIVES = 10
"""Below this many val controls x FPR, a tpr@fpr monitor is mostly noise (warned once)."""


@torch.no_grad()
def score_batches(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    *,
    channels_last: bool = True,
    step: EvalStep | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits and labels of every valid row of ``batches`` (this rank's share).

    Args:
        model: the unwrapped model (used when ``step`` is None).
        batches: reader batches with ``image``, ``meta``, ``label``, ``valid``.
        device: where the model lives.
        channels_last: memory format of the images (when ``step`` is None).
        step: the eval step to score with; None: an eager one (fp32).

    Returns:
        ``(logits float32 (N,), labels float32 (N,))`` on CPU.
    """
    if step is None:
        step = EvalStep(model, device=device, batch_size=1, channels_last=channels_last)
    logits, labels, valid = [], [], []
    for batch in batches:
        logits.append(step.logits(batch["image"], batch["meta"]))  # on the device: no sync
        labels.append(batch["label"].float().cpu())
        valid.append(batch["valid"].cpu())
    if not logits:
        return torch.zeros(0), torch.zeros(0)
    keep = torch.cat(valid)
    return torch.cat(logits).cpu()[keep], torch.cat(labels)[keep]


def compute_val_metrics(
    logits: torch.Tensor, labels: torch.Tensor, loss_fn: Callable | None = None
) -> dict[str, float]:
    """Metrics of gathered fp32 logits: AUROC, tpr@fpr 1e-4 / 1e-3, fpr@tpr 0.9, loss.

    Ranking uses the fp32 logits (monotone in the score, and free of sigmoid saturation
    ties). With a single class present the ROC metrics are NaN (logged as a warning).
    """
    y = labels.numpy().astype("int8")
    s = logits.double().numpy()
    num_pos = int(y.sum())
    out: dict[str, float] = {"val/num": float(y.size), "val/num_pos": float(num_pos),
                             "val/num_neg": float(y.size - num_pos)}  # fmt: skip
    if loss_fn is not None and y.size:
        out["val/loss"] = float(loss_fn(logits, labels))
    p = torch.sigmoid(logits)
    out["val/binary_frac"] = float(((p < 0.01) | (p > 0.99)).float().mean()) if y.size else math.nan
    try:
        out["val/auroc"] = roc.auroc(y, s)
        out["val/tpr@fpr1e-4"] = roc.tpr_at_fpr(y, s, 1e-4).tpr
        out["val/tpr@fpr1e-3"] = roc.tpr_at_fpr(y, s, 1e-3).tpr
        out["val/fpr@tpr0.9"] = roc.fpr_at_tpr(y, s, 0.9).fpr
    except DataError as exc:
        log.warning("validation metrics undefined: %s", exc)
        for key in ("val/auroc", "val/tpr@fpr1e-4", "val/tpr@fpr1e-3", "val/fpr@tpr0.9"):
            out[key] = math.nan
    return out


def validate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    env: DistEnv,
    *,
    loss_fn: Callable | None = None,
    channels_last: bool = True,
    step: EvalStep | None = None,
) -> dict[str, float]:
    """Score this rank's share, gather every rank's logits/labels, compute the metrics.

    Args:
        model: the *unwrapped* model (no DDP: ranks may see different batch counts).
        batches: this rank's val batches (reader with shuffle=False, drop_last=False).
        env: the distributed context.
        loss_fn: optional loss to report as ``val/loss``.
        channels_last: memory format of the images (when ``step`` is None).
        step: the eval step (graphed on CUDA by the trainer); None: eager, fp32.

    Returns:
        The same flat metrics dict on every rank (plus ``val/wall_s``).
    """
    t0 = time.perf_counter()
    logits, labels = score_batches(model, batches, env.device, channels_last=channels_last,
                                   step=step)  # fmt: skip
    logits = all_gather_1d(logits.to(env.device), env).cpu()
    labels = all_gather_1d(labels.to(env.device), env).cpu()
    out = compute_val_metrics(logits, labels, loss_fn)
    out["val/wall_s"] = time.perf_counter() - t0
    return {k: float(v) for k, v in out.items()}


def _key(metrics: dict[str, float], monitor: str = MONITOR) -> tuple[float, float]:
    def finite(x: float | None) -> float:
        return x if x is not None and math.isfinite(x) else -math.inf

    return finite(metrics.get(monitor)), finite(metrics.get("val/auroc"))


class EarlyStopping:
    """Patience on a val metric (default tpr@fpr=1e-4), ties broken by AUROC; also picks the
    best checkpoint.

    Args:
        patience: stop after this many validations without improvement (0: never stop).
        monitor: a ``MONITORS`` name.
        warn: log the noisy-monitor warning (rank 0 only under torchrun).
    """

    def __init__(self, patience: int, monitor: str = "tpr@fpr1e-4", *, warn: bool = True) -> None:
        if monitor not in MONITORS:
            raise ValueError(f"unknown monitor {monitor!r}: use one of {', '.join(MONITORS)}")
        self.patience, self.monitor = patience, MONITORS[monitor]
        self.best: tuple[float, float] | None = None
        self.best_epoch = -1
        self.num_bad = 0
        self._warned = not warn

    def update(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record one validation; returns True if it is the new best (the first always is)."""
        self._warn_if_noisy(metrics)
        key = _key(metrics, self.monitor)
        if self.best is None or key > self.best:
            self.best, self.best_epoch, self.num_bad = key, epoch, 0
            return True
        self.num_bad += 1
        return False

    def _warn_if_noisy(self, metrics: dict[str, float]) -> None:
        if self._warned or not self.monitor.startswith("val/tpr@fpr"):
            return
        fpr = float(self.monitor.rsplit("fpr", 1)[1])
        expected = metrics.get("val/num_neg", math.inf) * fpr
        if expected < MIN_FALSE_POSITIVES:
            self._warned = True
            log.warning("%s rests on %.1f false positives (%d val controls): best.pt and early "
                        "stopping follow noise; use more val controls or --monitor tpr@fpr1e-3",
                        self.monitor, expected, int(metrics["val/num_neg"]))  # fmt: skip

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` validations in a row brought no improvement."""
        return self.patience > 0 and self.num_bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for the checkpoint."""
        best = None if self.best is None else [float(v) for v in self.best]
        return {"best": best, "best_epoch": self.best_epoch, "num_bad": self.num_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.best = None if state["best"] is None else (state["best"][0], state["best"][1])
        self.best_epoch, self.num_bad = int(state["best_epoch"]), int(state["num_bad"])
