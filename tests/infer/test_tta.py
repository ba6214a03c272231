"""D4 test-time augmentation: a group of 8, invariant scores, identity on symmetric stamps."""

from __future__ import annotations

import pytest
import torch

from haloscope.infer.predict import make_forward
from haloscope.infer.tta import NUM_D4, d4_transform, d4_views, tta_logits
from haloscope.train.model import build_model


@pytest.fixture(scope="module")
def forward():
    torch.manual_seed(0)
    model = build_model(
        arch="convnext_atto", meta_cols=("psfsize_r",), meta_mean=[1.3], meta_std=[0.25]
    )
    with torch.no_grad():
        model.classifier[-1].weight.mul_(20.0)
    return make_forward(model, torch.device("cpu"), use_bf16=False)


def _symmetric(n: int) -> torch.Tensor:
    """Stamps invariant under all 8 D4 maps of the array (symmetric about pixel 31.5)."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    r2 = (yy - 31.5) ** 2 + (xx - 31.5) ** 2
    scales = torch.linspace(2.0, 12.0, n)[:, None, None, None]
    return torch.exp(-r2[None, None] / scales**2).expand(n, 3, 64, 64).contiguous()


def test_d4_views_are_eight_distinct_maps_closed_under_composition():
    x = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    views = d4_views(x)
    assert len(views) == NUM_D4 and torch.equal(views[0], x)
    keys = {v.numpy().tobytes() for v in views}
    assert len(keys) == NUM_D4
    for i in range(NUM_D4):  # g_i(g_j(x)) is again one of the 8 views
        for j in range(NUM_D4):
            assert d4_transform(d4_transform(x, j), i).numpy().tobytes() in keys
    with pytest.raises(ValueError):
        d4_transform(x, 8)


def test_tta_is_identity_on_d4_symmetric_input(forward):
    x = _symmetric(6)
    meta = torch.full((6, 1), 1.3)
    for i in range(NUM_D4):
        assert torch.equal(d4_transform(x, i), x)
    assert torch.equal(tta_logits(forward, x, meta), forward(x, meta))


def test_tta_logit_is_invariant_under_d4(forward):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 64, 64, generator=gen)
    meta = torch.full((5, 1), 1.1)
    base = tta_logits(forward, x, meta)
    assert not torch.allclose(base, forward(x, meta))  # TTA is not a no-op on real stamps
    for i in range(1, NUM_D4):
        assert torch.equal(tta_logits(forward, d4_transform(x, i), meta), base)
