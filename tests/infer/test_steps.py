"""Inference steps (infer/steps.py): chunking, train mode restored, graph vs eager on a GPU."""

from __future__ import annotations

import pytest
import torch

from haloscope.infer.steps import PredictStep, make_predict_step
from tests.train.test_cuda_graph import _convnext_pair, _gpu_batches
from tests.train.test_step import TinyNet, tiny_batch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_eager_predict_chunks_and_restores_train_mode() -> None:
    model = TinyNet().train()
    images, meta, _ = tiny_batch(7, seed=4)
    step = make_predict_step(model, device="cpu", batch_size=3, channels_last=False)
    assert isinstance(step, PredictStep) and step.mode == "eager"
    got = step.predict(images, meta)
    assert model.training
    with torch.no_grad():
        want = model.eval()(images.float(), meta)
    torch.testing.assert_close(got, want)
    assert step.predict(images[:0], meta[:0]).shape == (0,)
    with pytest.raises(ValueError, match="graphed step needs CUDA"):
        make_predict_step(model, device="cpu", mode="graph")


@pytest.mark.gpu
@requires_cuda
def test_graphed_predict_matches_eager_with_a_padded_tail() -> None:
    (model, _), _ = _convnext_pair(seed=2)
    images, meta, _ = _gpu_batches(1, 300)[0]
    kw = {"device": "cuda", "batch_size": 128, "bf16": True}
    eager = make_predict_step(model, mode="eager", **kw)
    graphed = make_predict_step(model, mode="graph", **kw)
    want, got = eager.predict(images, meta), graphed.predict(images, meta)
    assert got.shape == (300,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
