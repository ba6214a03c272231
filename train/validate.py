"""Validation over the whole val split (sharded over ranks, gathered) and early stopping.

Each rank scores its share of the val split with the reader in exact eval mode, through the
trainer's eval step (``train.step.EvalStep``: one CUDA graph per batch on CUDA, eager on CPU;
the reader's batches all have the same shape, padding rows marked ``valid == False``). On
CUDA it runs under bf16 autocast with the model's fp32 logit layer, the numerics ``haloscope
infer`` scores the test split with (no bf16 ties); fp32 elsewhere. The logits stay on the
device until the last batch; then the padding rows are dropped, logits and labels from every
rank are gathered, and every rank computes the same metrics with
``haloscope.evaluate.metrics`` (exact tie handling), so the early-stopping decision is
identical on all ranks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from haloscope.errors import DataError
from haloscope.evaluate import metrics as roc
from haloscope.evaluate.detectable import DEFAULT_DETECTABLE, detectable_mask, parse_detectable
from haloscope.evaluate.scores import ScoresFrame
from haloscope.train.dist import DistEnv, all_gather_1d
from haloscope.train.step import EvalStep

__all__ = [
    "MONITOR",
    "MONITORS",
    "score_batches",
    "detectable_flags",
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
    "det_tpr@fpr1e-4": "val/det_tpr@fpr1e-4",
    "det_tpr@fpr1e-3": "val/det_tpr@fpr1e-3",
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """fp32 logits and labels of every valid row of ``batches`` (this rank's share).

    Args:
        model: the unwrapped model (used when ``step`` is None).
        batches: reader batches with ``image``, ``meta``, ``label``, ``valid`` (and ``table``
            when the reader was built ``with_table``).
        device: where the model lives.
        channels_last: memory format of the images (when ``step`` is None).
        step: the eval step to score with; None: an eager one (fp32).

    Returns:
        ``(logits float32 (N,), labels float32 (N,), detectable)`` on CPU; ``detectable`` is
        a float32 (N,) 1/0 flag of the lenses in the detectable subset
        (:func:`detectable_flags`), or None when the batches carry no table.
    """
    if step is None:
        step = EvalStep(model, device=device, batch_size=1, channels_last=channels_last)
    logits, labels, valid, flags = [], [], [], []
    for batch in batches:
        logits.append(step.logits(batch["image"], batch["meta"]))  # on the device: no sync
        labels.append(batch["label"].float().cpu())
        valid.append(batch["valid"].cpu())
        if "table" in batch:
            flags.append(detectable_flags(batch["table"]))
    if not logits:
        return torch.zeros(0), torch.zeros(0), None
    keep = torch.cat(valid)
    det = torch.cat(flags)[keep] if len(flags) == len(logits) else None
    return torch.cat(logits).cpu()[keep], torch.cat(labels)[keep], det


_DETECTABLE = parse_detectable(DEFAULT_DETECTABLE)
_TABLE_COLUMNS = ("arc_snr", "arc_snr_sum", "theta_e_arcsec", "psfsize_r")


def detectable_flags(table: np.ndarray) -> torch.Tensor:
    """1.0 for the lenses of a shard ``table`` batch in evaluate's pre-registered detectable
    subset (``DEFAULT_DETECTABLE``: arc_snr >= 5 and theta_E/psfsize_r >= 0.8), else 0.0.

    The one definition is ``haloscope.evaluate.detectable``'s, applied to the per-sample
    truth columns that shards carry; controls and lenses with a missing value are 0.
    """
    labels = np.asarray(table["label"], dtype=np.int8)
    columns = {c: np.asarray(table[c], dtype=np.float64) for c in _TABLE_COLUMNS}
    frame = ScoresFrame(
        source="<val batch>",
        columns=columns,
        labels=labels,
        ranking=np.zeros(labels.size),
        rank_by="logit",
    )
    assert _DETECTABLE is not None
    subset = detectable_mask(frame, _DETECTABLE)
    mask = subset.mask if subset.mask is not None else np.zeros(labels.size, dtype=bool)
    return torch.from_numpy(mask.astype(np.float32))


def compute_val_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable | None = None,
    detectable: torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics of gathered fp32 logits: AUROC, tpr@fpr 1e-4 / 1e-3, fpr@tpr 0.9, loss.

    With ``detectable`` (1 for the lenses of the detectable subset), also ``val/det_*``: the
    same TPRs and AUROC of those lenses against *all* controls (evaluate's headline), and
    ``val/det_num_pos`` (the TPRs and AUROC are left out when it is 0).

    Ranking uses the fp32 logits (monotone in the score, and free of sigmoid saturation
    ties). With a single class present the ROC metrics are NaN (logged as a warning).
    """
    y = labels.numpy().astype("int8")
    s = logits.double().numpy()
    num_pos = int(y.sum())
    out: dict[str, float] = {
        "val/num": float(y.size),
        "val/num_pos": float(num_pos),
        "val/num_neg": float(y.size - num_pos),
    }
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
    if detectable is not None:
        out.update(_detectable_metrics(y, s, detectable.numpy() > 0))
    return out


def _detectable_metrics(y: np.ndarray, s: np.ndarray, det: np.ndarray) -> dict[str, float]:
    keep = det | (y == 0)  # the subset's lenses and every control
    out = {"val/det_num_pos": float(det.sum())}
    if not det.any():  # no lens of the split is in the subset (tiny or truth-less shards)
        return out
    try:
        out["val/det_auroc"] = roc.auroc(y[keep], s[keep])
        out["val/det_tpr@fpr1e-4"] = roc.tpr_at_fpr(y[keep], s[keep], 1e-4).tpr
        out["val/det_tpr@fpr1e-3"] = roc.tpr_at_fpr(y[keep], s[keep], 1e-3).tpr
    except DataError as exc:
        log.warning("detectable-subset validation metrics undefined: %s", exc)
        for key in ("val/det_auroc", "val/det_tpr@fpr1e-4", "val/det_tpr@fpr1e-3"):
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
    logits, labels, det = score_batches(
        model, batches, env.device, channels_last=channels_last, step=step
    )
    logits = all_gather_1d(logits.to(env.device), env).cpu()
    labels = all_gather_1d(labels.to(env.device), env).cpu()
    if det is not None:
        det = all_gather_1d(det.to(env.device), env).cpu()
    out = compute_val_metrics(logits, labels, loss_fn, det)
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
            log.warning(
                "%s rests on %.1f false positives (%d val controls): best.pt and early "
                "stopping follow noise; use more val controls or --monitor tpr@fpr1e-3",
                self.monitor,
                expected,
                int(metrics["val/num_neg"]),
            )

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
