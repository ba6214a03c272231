"""The lens finder: timm ConvNeXt backbone + the seed's meta MLP head, one logit.

``build_model`` is the one factory (``haloscope.infer`` imports it). The model takes the
*raw* meta values (as stored in the shards) and standardises them with the train split's
mean/std, kept as buffers, so a checkpoint scores raw meta without the shard manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import timm
import torch
from torch import nn
from torch.nn import functional as F

from haloscope.errors import ConfigError
from haloscope.preprocess.schema import check_meta_columns as check_meta_cols

__all__ = [
    "SUPPORTED_ARCHS",
    "LensFinder",
    "build_model",
    "check_meta_cols",
]

log = logging.getLogger(__name__)

SUPPORTED_ARCHS: tuple[str, ...] = (
    "convnext_tiny",
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
)
_HEAD_WIDTH = 256


class LensFinder(nn.Module):
    """ConvNeXt features (+ standardised meta through an MLP) -> one logit per sample.

    Args:
        backbone: a timm model built with ``num_classes=0`` (returns pooled features).
        meta_mean: (M,) train-split mean of the raw meta columns (M may be 0).
        meta_std: (M,) train-split standard deviation.
        dropout: dropout probability in the head.
    """

    def __init__(
        self, backbone: nn.Module, meta_mean: torch.Tensor, meta_std: torch.Tensor, dropout: float
    ) -> None:
        super().__init__()
        self.backbone = backbone
        num_features = int(backbone.num_features)  # 768 for convnext_tiny
        num_meta = int(meta_mean.numel())
        self.register_buffer("meta_mean", meta_mean.detach().float().reshape(num_meta).clone())
        self.register_buffer("meta_std", meta_std.detach().float().reshape(num_meta).clone())
        if num_meta:
            self.meta_mlp = nn.Sequential(
                nn.Linear(num_meta, _HEAD_WIDTH),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(_HEAD_WIDTH, _HEAD_WIDTH),
                nn.ReLU(),
            )
            self.classifier = nn.Sequential(
                nn.Linear(num_features + _HEAD_WIDTH, _HEAD_WIDTH),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(_HEAD_WIDTH, 1),
            )
        else:
            self.meta_mlp = None
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, 1))

    @property
    def num_meta(self) -> int:
        """Number of meta inputs M."""
        return int(self.meta_mean.numel())

    def standardize_meta(self, meta: torch.Tensor) -> torch.Tensor:
        """(B, M) raw -> standardised; NaN (missing) becomes 0, i.e. the train mean."""
        z = (meta.float() - self.meta_mean) / self.meta_std
        return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Score a batch.

        Args:
            images: (B, 3, 64, 64) normalised stamps, bands g, r, z.
            meta: (B, M) raw meta values in the model's column order (None when M == 0).

        Returns:
            (B,) logits: in eval mode always fp32 (the logit layer runs outside autocast, so
            scores under bf16 autocast have no bf16 ties); in train mode the autocast dtype.
        """
        feats = self.backbone(images)  # (B, F)
        if self.meta_mlp is not None:
            if meta is None or meta.shape[-1] != self.num_meta:
                got = None if meta is None else tuple(meta.shape)
                raise ValueError(f"model expects meta (B, {self.num_meta}), got {got}")
            z = self.standardize_meta(meta).to(feats.dtype)
            feats = torch.cat([feats, self.meta_mlp(z)], dim=1)
        *hidden, logit = self.classifier
        for layer in hidden:
            feats = layer(feats)
        if self.training:  # the measured recipe: the loss takes the autocast logit
            return logit(feats).squeeze(1)
        # scoring: the logit layer in fp32 outside autocast, so a bf16 backbone adds no ties
        # (a bf16 logit has 8 significant bits: reference B3/B4, docs/inference.md)
        with torch.autocast(feats.device.type, enabled=False):
            bias = None if logit.bias is None else logit.bias.float()
            return F.linear(feats.float(), logit.weight.float(), bias).squeeze(1)


def build_model(
    *,
    arch: str = "convnext_tiny",
    meta_cols: Sequence[str] = (),
    meta_mean: Sequence[float] | torch.Tensor | None = None,
    meta_std: Sequence[float] | torch.Tensor | None = None,
    dropout: float = 0.1,
    drop_path_rate: float = 0.1,
) -> LensFinder:
    """Build the lens finder from random init (never downloads weights).

    Args:
        arch: a timm ConvNeXt name from ``SUPPORTED_ARCHS``.
        meta_cols: allow-listed meta columns (order = the meta tensor's columns).
        meta_mean: per-column train mean (len(meta_cols)); default zeros.
        meta_std: per-column train std; default ones. Non-positive stds are refused.
        dropout: head dropout.
        drop_path_rate: backbone stochastic depth.

    Returns:
        The model (fp32, on CPU, train mode).

    Raises:
        ConfigError: unknown arch, leaky/unknown meta column, or bad statistics.
    """
    if arch not in SUPPORTED_ARCHS:
        raise ConfigError(f"--arch must be one of {list(SUPPORTED_ARCHS)}, got {arch!r}")
    cols = check_meta_cols(meta_cols)
    mean = torch.zeros(len(cols)) if meta_mean is None else torch.as_tensor(meta_mean).float()
    std = torch.ones(len(cols)) if meta_std is None else torch.as_tensor(meta_std).float()
    if mean.shape != (len(cols),) or std.shape != (len(cols),):
        raise ConfigError(
            f"meta statistics must have {len(cols)} values for {list(cols)}, "
            f"got mean {tuple(mean.shape)} and std {tuple(std.shape)}"
        )
    if not (torch.isfinite(std).all() and (std > 0).all() and torch.isfinite(mean).all()):
        raise ConfigError(
            f"meta statistics for {list(cols)} must be finite with std > 0: "
            f"mean={mean.tolist()} std={std.tolist()}"
        )
    backbone = timm.create_model(
        arch, pretrained=False, num_classes=0, in_chans=3, drop_path_rate=drop_path_rate
    )
    return LensFinder(backbone, mean, std, dropout)
