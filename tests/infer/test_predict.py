"""Scoring numerics: the model's fp32 logit layer (eval mode) keeps bf16 autocast from creating
score ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from haloscope.infer.predict import make_forward, sigmoid32
from haloscope.train.model import build_model

N = 512


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = build_model(
        arch="convnext_atto",
        meta_cols=("psfsize_r", "psfdepth_r"),
        meta_mean=[1.3, 24.3],
        meta_std=[0.25, 0.4],
    ).eval()
    with torch.no_grad():  # spread logits over roughly +-10, where bf16 spacing is 1/16
        model.classifier[-1].weight.mul_(15.0)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(N, 3, 64, 64, generator=gen).half().float()  # fp16 like the shards
    meta = torch.stack(
        [1.3 + 0.2 * torch.randn(N, generator=gen), 24.3 + 0.4 * torch.randn(N, generator=gen)], 1
    )
    return model, images, meta


def _bf16_representable(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float() == x


def test_naive_bf16_autocast_quantises_logits(model_and_inputs):
    """The seed's bug, reproduced: an autocast logit layer (the model in train mode, as the
    training step runs it) gives bf16-rounded logits."""
    model, images, meta = model_and_inputs
    model.train()
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            naive = model(images, meta)
    finally:
        model.eval()
    assert naive.dtype == torch.bfloat16
    naive = naive.float()
    fp32 = make_forward(model, torch.device("cpu"), use_bf16=False)(images, meta)
    assert bool(_bf16_representable(naive).all())
    assert naive.unique().numel() < fp32.unique().numel()  # the ties the control shows


def test_bf16_scoring_adds_no_ties(model_and_inputs):
    """In eval mode, bf16 autocast has exactly as many distinct scores as fp32."""
    model, images, meta = model_and_inputs
    fp32_logits = make_forward(model, torch.device("cpu"), use_bf16=False)(images, meta)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images[:4], meta[:4]).dtype == torch.float32  # the model's own rule
    bf16_logits = make_forward(model, torch.device("cpu"), use_bf16=True)(images, meta)
    assert bf16_logits.dtype == torch.float32
    # fp32-rounded, not bf16-rounded: most logits are not bf16 values
    assert float(_bf16_representable(bf16_logits).float().mean()) < 0.1
    assert np.unique(bf16_logits.numpy()).size == np.unique(fp32_logits.numpy()).size == N
    # scores: bf16 ties only where fp32 ties too (sigmoid32 saturates identically near 0/1)
    assert (
        np.unique(sigmoid32(bf16_logits.numpy())).size
        >= np.unique(sigmoid32(fp32_logits.numpy())).size
    )
    # and the bf16 model still computes the same function (backbone error only)
    assert torch.allclose(bf16_logits, fp32_logits, atol=0.5 + 0.05 * fp32_logits.abs().max())


def test_sigmoid32_is_stable_and_exact():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0], dtype=np.float32)
    s = sigmoid32(x)
    assert s.dtype == np.float32
    with np.errstate(over="ignore"):
        ref = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    np.testing.assert_array_equal(s, ref.astype(np.float32))
    assert s[1] > 0  # no cancellation to 0 for very negative logits
