"""The lens-finder model: shapes, meta standardisation buffers, allow-list, and learning."""

from __future__ import annotations

import pytest
import torch

from haloscope.errors import ConfigError
from haloscope.train.config import LossConfig
from haloscope.train.loss import build_loss
from haloscope.train.model import build_model, check_meta_cols
from haloscope.train.optim import build_optimizer
from haloscope.train.step import make_train_step

COLS = ["psfsize_r", "psfdepth_r"]


def test_convnext_tiny_shape_and_size() -> None:
    model = build_model(
        arch="convnext_tiny", meta_cols=COLS, meta_mean=[1.3, 24.5], meta_std=[0.2, 0.5]
    )
    backbone = sum(p.numel() for p in model.backbone.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone"))
    assert model.backbone.num_features == 768
    assert 27.8e6 < backbone < 27.9e6  # timm convnext_tiny without its fc (27.82M)
    # meta_mlp 2*256+256 + 256*256+256, classifier (768+256)*256+256 + 256+1
    assert head == (2 * 256 + 256) + (256 * 256 + 256) + (1024 * 256 + 256) + (256 + 1)
    model.eval()
    out = model(torch.randn(2, 3, 64, 64), torch.tensor([[1.3, 24.5], [1.1, 23.0]]))
    assert out.shape == (2,) and out.dtype == torch.float32


def test_meta_is_standardised_inside_with_buffers() -> None:
    model = build_model(
        arch="convnext_atto", meta_cols=COLS, meta_mean=[1.3, 24.5], meta_std=[0.2, 0.5]
    )
    state = model.state_dict()
    assert torch.equal(state["meta_mean"], torch.tensor([1.3, 24.5]))
    assert torch.equal(state["meta_std"], torch.tensor([0.2, 0.5]))
    z = model.standardize_meta(torch.tensor([[1.5, 24.0], [float("nan"), 25.5]]))
    assert torch.allclose(z, torch.tensor([[1.0, -1.0], [0.0, 2.0]]), atol=1e-6)
    assert "meta_mean" not in dict(model.named_parameters())


@pytest.mark.parametrize(
    "col",
    ["theta_e_arcsec", "psf_fwhm_used_r", "arc_snr", "lens_model", "physics_flux", "src_x_rad"],
)
def test_leaky_meta_column_refused(col: str) -> None:
    with pytest.raises(ConfigError, match="leaks the label"):
        build_model(arch="convnext_atto", meta_cols=["psfsize_r", col])


def test_unknown_meta_column_and_bad_stats_refused() -> None:
    with pytest.raises(ConfigError, match="not an allowed meta column"):
        check_meta_cols(["brickname"])
    with pytest.raises(ConfigError, match="std > 0"):
        build_model(arch="convnext_atto", meta_cols=COLS, meta_mean=[0, 0], meta_std=[1, 0])
    with pytest.raises(ConfigError, match="--arch"):
        build_model(arch="resnet50")


def test_no_meta_head() -> None:
    model = build_model(arch="convnext_atto", dropout=0.0).eval()
    assert model.meta_mlp is None and model.num_meta == 0
    assert model(torch.randn(3, 3, 64, 64), torch.zeros(3, 0)).shape == (3,)


def test_overfits_a_few_dozen_samples() -> None:
    """24 random images with random labels are memorised: the model and step really learn."""
    torch.manual_seed(0)
    model = build_model(
        arch="convnext_atto",
        meta_cols=COLS,
        meta_mean=[1.3, 24.5],
        meta_std=[0.2, 0.5],
        dropout=0.0,
        drop_path_rate=0.0,
    )
    opt = build_optimizer(model, lr=2e-3, weight_decay=0.0)
    images, meta = torch.randn(24, 3, 64, 64), torch.randn(24, 2) * 0.2 + torch.tensor([1.3, 24.5])
    labels = (torch.arange(24) % 2).float()[torch.randperm(24)]
    step = make_train_step(
        model,
        build_loss(LossConfig(name="bce")),
        opt,
        24,
        device="cpu",
        augment=False,
        channels_last=False,
    )
    losses: list[float] = []
    for _ in range(80):  # stops as soon as memorised (typically ~25 steps)
        losses.append(step.step(images, meta, labels)["loss"].item())
        if losses[-1] < 0.02 * losses[0]:
            break
    model.eval()
    with torch.no_grad():
        acc = ((model(images, meta) > 0).float() == labels).float().mean().item()
    assert losses[-1] < 0.02 * losses[0], losses
    assert acc == 1.0
