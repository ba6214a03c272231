"""Inference steps: logits for any number of rows, eager, compiled or from a CUDA graph.

A ``PredictStep`` cuts its input into chunks of ``batch_size`` rows and scores each with
the trainer's eval step (``haloscope.train.step.EvalStep``: the one forward definition that
validation also runs, captured in a CUDA graph in ``graph`` mode, the last chunk padded and
its padded logits dropped). The model is put in eval mode for a call and back after it.
"""

from __future__ import annotations

import torch
from torch import nn

from haloscope.train.step import EvalStep, StepMode, make_eval_step

__all__ = ["PredictStep", "make_predict_step"]


class PredictStep:
    """Inference logits for N rows in chunks of the eval step's batch.

    Args:
        eval_step: the per-chunk step (its ``batch_size`` is the chunk size).
    """

    def __init__(self, eval_step: EvalStep) -> None:
        self.eval_step = eval_step
        self.batch_size, self.mode = eval_step.batch_size, eval_step.mode
        self.device = eval_step.device

    def predict(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Logits (N,) fp32 on the device for images (N,3,H,W) and meta (N,M), any N."""
        b = self.batch_size
        outs = [
            self.eval_step.logits(images[i : i + b], meta[i : i + b])
            for i in range(0, images.shape[0], b)
        ]
        return torch.cat(outs) if outs else torch.empty(0, device=self.device)


def make_predict_step(
    model: nn.Module,
    *,
    device: torch.device | str,
    batch_size: int = 1024,
    mode: StepMode = "auto",
    bf16: bool | None = None,
    channels_last: bool = True,
) -> PredictStep:
    """Build the inference step.

    Args:
        model: the lens finder on ``device``.
        device: where the model lives.
        batch_size: rows per chunk (the graph's static batch).
        mode: ``auto`` (graph on CUDA, eager elsewhere), ``graph``, ``compile`` or ``eager``.
        bf16: bf16 autocast; None: on for CUDA, off elsewhere.
        channels_last: feed the model channels-last images.

    Raises:
        ValueError: ``graph`` without CUDA, an unknown mode, or batch_size < 1.
    """
    step = make_eval_step(
        model,
        device=device,
        batch_size=batch_size,
        mode=mode,
        bf16=bf16,
        channels_last=channels_last,
    )
    return PredictStep(step)
