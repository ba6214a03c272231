"""Focal loss against a direct float64 formula, at ordinary and extreme logits; reductions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from haloscope.errors import ConfigError
from haloscope.train.config import LossConfig
from haloscope.train.loss import bce_loss, build_loss, focal_loss


def _reference(z: np.ndarray, y: np.ndarray, alpha: float | None, gamma: float) -> float:
    """Lin et al. (2017) in float64, in log space: log p = -log(1 + e^-z)."""
    log_p = -np.logaddexp(0.0, -z)
    log_1mp = -np.logaddexp(0.0, z)
    log_pt = np.where(y == 1, log_p, log_1mp)
    pt = np.exp(log_pt)
    w = 1.0 if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return float(np.mean(-w * (1 - pt) ** gamma * log_pt))


@pytest.mark.parametrize("alpha", [0.25, None, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_matches_direct_formula(alpha: float | None, gamma: float) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 257)
    y = (rng.random(257) < 0.3).astype(np.float64)
    got = focal_loss(
        torch.tensor(z, dtype=torch.float32), torch.tensor(y), alpha=alpha, gamma=gamma
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_reference(z, y, alpha, gamma), rel=1e-5)


@pytest.mark.parametrize(
    "z,y", [(100.0, 1), (100.0, 0), (-100.0, 1), (-100.0, 0), (30.0, 0), (-50.0, 1)]
)
def test_focal_extreme_logits_exact_and_finite_gradient(z: float, y: int) -> None:
    logits = torch.tensor([z], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([float(y)]), alpha=0.25, gamma=2.0)
    ref = _reference(np.array([z]), np.array([y]), 0.25, 2.0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-30)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    if (z > 0) == (y == 1):  # confidently right: tiny loss, not a clamp at log(1e-8)
        assert loss.item() < 1e-30
    else:  # confidently wrong: ~ w * |z|, not saturated (the seed clamped at -log 1e-8 = 18.4)
        assert loss.item() == pytest.approx((0.25 if y else 0.75) * abs(z), rel=1e-4)


def test_gamma0_is_bce() -> None:
    """gamma = 0: alpha=None is exactly BCE; alpha=0.5 is BCE / 2 (w = 0.5 for both classes)."""
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(0, 10, 500), dtype=torch.float32)
    y = torch.tensor((rng.random(500) < 0.5).astype(np.float32))
    bce = F.binary_cross_entropy_with_logits(z, y)
    assert focal_loss(z, y, alpha=None, gamma=0.0).item() == pytest.approx(bce.item(), rel=1e-6)
    assert focal_loss(z, y, alpha=0.5, gamma=0.0).item() == pytest.approx(bce.item() / 2, rel=1e-6)
    assert bce_loss(z, y).item() == pytest.approx(bce.item(), rel=1e-7)


def test_bf16_logits_give_fp32_loss_from_upcast() -> None:
    z = torch.tensor([5.5, -3.25, 8.0], dtype=torch.bfloat16)
    y = torch.tensor([1.0, 0.0, 0.0])
    got = focal_loss(z, y, alpha=0.25, gamma=2.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        focal_loss(z.float(), y, alpha=0.25, gamma=2.0).item(), rel=0
    )


def test_build_loss_from_config_and_its_defaults() -> None:
    z, y = torch.tensor([0.3, -2.0]), torch.tensor([1.0, 0.0])
    default = LossConfig()
    assert (default.name, default.alpha, default.gamma) == ("focal", 0.25, 2.0)  # the one place
    want = focal_loss(z, y, alpha=0.25, gamma=2.0).item()
    assert build_loss()(z, y).item() == want
    assert build_loss(LossConfig(alpha=0.5, gamma=1.0))(z, y).item() == pytest.approx(
        focal_loss(z, y, alpha=0.5, gamma=1.0).item()
    )
    assert build_loss(LossConfig(name="bce"))(z, y).item() == pytest.approx(bce_loss(z, y).item())
    with pytest.raises(ConfigError, match="--loss"):
        build_loss(LossConfig(name="hinge"))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["focal", "bce"])
def test_reductions_agree(name: str) -> None:
    """``none`` is the per-sample loss whose mean and sum the other reductions return."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(37, generator=gen) * 4
    labels = (torch.rand(37, generator=gen) < 0.3).float()
    fn = build_loss(LossConfig(name=name))
    per = fn(logits, labels, reduction="none")
    assert per.shape == (37,) and per.dtype == torch.float32
    torch.testing.assert_close(per.mean(), fn(logits, labels))
    torch.testing.assert_close(per.sum(), fn(logits, labels, reduction="sum"))
    torch.testing.assert_close(per[5], fn(logits[5:6], labels[5:6]))
    with pytest.raises(ValueError, match="reduction"):
        fn(logits, labels, reduction="max")  # type: ignore[arg-type]
