"""Scoring: a model forward whose logits are fp32 even under bf16 autocast, and the loop.

Why the output layer runs in fp32 (``reference/original_pipeline.md`` B3/B4): under bf16
autocast the final ``Linear(256 -> 1)`` would return a bf16 logit. bf16 keeps 8 significant
bits, so logits near 10 are spaced 0.0625 apart and thousands of controls share one value;
casting that bf16 logit to fp32 afterwards cannot undo the rounding. We therefore run the
backbone and the hidden head layers under autocast (that is where the time goes) and the
last ``Linear(., 1)`` outside autocast, in fp32 on fp32-cast inputs: the model does it
itself in eval mode (``train.model.LensFinder.forward``, so validation, ``infer`` and
``search`` score alike). Its output is a fp32-rounded dot product of 256 terms, so the
logit takes (practically) as many distinct values as in a full-fp32 model.
``score = float32(sigmoid(float64(logit)))``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from haloscope.errors import ConfigError
from haloscope.infer.sources import ScoreBatch
from haloscope.infer.steps import make_predict_step
from haloscope.infer.tta import tta_logits

__all__ = ["make_forward", "score_batches", "sigmoid32"]

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_forward(
    model: nn.Module,
    device: torch.device,
    use_bf16: bool,
    *,
    step: str = "eager",
    batch_size: int = 1024,
) -> Forward:
    """A no-grad ``(images, meta) -> (B,) fp32 logits`` function for the model.

    The model call goes through ``infer.steps.make_predict_step``, the one home of
    eager / ``torch.compile`` / CUDA-graph inference steps (issue 9): ``auto`` replays one
    CUDA graph per batch on CUDA (short batches padded) and runs eagerly elsewhere.

    Args:
        model: the lens finder, already on ``device`` (in eval mode its logit layer runs in
            fp32 outside autocast, also inside a captured graph: ``train.model.LensFinder``).
        device: where inputs live.
        use_bf16: run under bf16 autocast (the output layer stays fp32 regardless).
        step: ``auto``, ``graph``, ``compile`` or ``eager``.
        batch_size: the step's static batch (graph mode); larger inputs are chunked.

    Raises:
        ConfigError: ``graph`` on a device without CUDA, or an unknown step.
    """
    model.eval()
    try:
        predictor = make_predict_step(
            model,
            device=device,
            batch_size=batch_size,
            mode=step,
            bf16=use_bf16,
            channels_last=device.type == "cuda",
        )
    except ValueError as exc:
        raise ConfigError(f"--step {step}: {exc}") from None

    def forward(images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return predictor.predict(images, meta).reshape(-1).float()

    return forward


def sigmoid32(logits: np.ndarray) -> np.ndarray:
    """float32 scores from float32 logits, computed in float64 (no overflow warnings)."""
    x = logits.astype(np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def _to_device(batch: ScoreBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(batch.images))
    meta = torch.from_numpy(np.ascontiguousarray(batch.meta, dtype=np.float32))
    non_blocking = device.type == "cuda"
    if non_blocking:
        images, meta = images.pin_memory(), meta.pin_memory()
    # float16 -> float32 on the device: the values the trainer fed the model
    images = images.to(device, non_blocking=non_blocking).float()
    return images, meta.to(device, non_blocking=non_blocking)


def score_batches(
    forward: Forward,
    batches: Iterable[ScoreBatch],
    device: torch.device,
    *,
    tta: bool = False,
    progress: bool = True,
    total_rows: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Score every batch.

    Args:
        forward: from ``make_forward``.
        batches: ``ScoreBatch``es of at most ``--batch-size`` rows.
        device: the model's device.
        tta: average logits over the 8 D4 transforms.
        progress: show a tqdm bar (rows).
        total_rows: expected rows for the bar (None: unknown).

    Yields:
        ``(columns, logits)`` with (K,) float32 logits per batch.
    """
    bar = tqdm(total=total_rows, unit="img", desc="infer", disable=not progress, smoothing=0.1)
    try:
        for batch in batches:
            images, meta = _to_device(batch, device)
            logits = tta_logits(forward, images, meta) if tta else forward(images, meta)
            bar.update(len(batch.images))
            yield batch.columns, logits.float().cpu().numpy()
    finally:
        bar.close()
