"""The opt-in Triton depthwise 7x7 (bench/depthwise.py) against cudnn's convolution.

CPU: the swap keeps parameters and state-dict keys and the CPU fallback is the same conv.
GPU (``-m gpu``): forward and all three gradients match ``F.conv2d`` in fp32 and under
bf16 autocast, and a graphed ConvNeXt-Tiny step with it tracks the cudnn one.
(The kernels were also checked on CPU with ``TRITON_INTERPRET=1``: docs/gpu_notes.md.)
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from haloscope.bench.depthwise import Depthwise7x7, depthwise7x7, use_triton_depthwise
from haloscope.train.model import build_model
from haloscope.train.step import StepOptions, TrainStep

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_swap_keeps_parameters_keys_and_cpu_math() -> None:
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=1)
    keys, params = list(model.state_dict()), {id(p) for p in model.parameters()}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model.eval()(x)
    assert use_triton_depthwise(model) == 12  # convnext_atto: depths 2, 2, 6, 2
    assert list(model.state_dict()) == keys
    assert {id(p) for p in model.parameters()} == params
    assert sum(isinstance(m, Depthwise7x7) for m in model.modules()) == 12
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)  # CPU falls back to F.conv2d


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("shape", [(8, 96, 16, 16), (5, 384, 4, 4), (3, 768, 2, 2), (2, 20, 7, 7)])
def test_triton_depthwise_matches_cudnn(shape: tuple[int, int, int, int]) -> None:
    n, c, h, w = shape
    x = torch.randn(shape, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    wt = (0.2 * torch.randn(c, 1, 7, 7, device="cuda")).requires_grad_()
    b = torch.randn(c, device="cuda").requires_grad_()
    g = torch.randn(shape, device="cuda")
    for amp in (False, True):
        with (
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp),
        ):
            got = depthwise7x7(x, wt, b)
            want = F.conv2d(x, wt, b, padding=3, groups=c)
        assert got.dtype == want.dtype
        grads = torch.autograd.grad(got, (x, wt, b), g.to(got.dtype))
        refs = torch.autograd.grad(want, (x, wt, b), g.to(want.dtype))
        tol = 1e-2 if amp else 1e-5  # bf16 operands vs fp32 (tf32 off for the reference)
        errs = [_rel(got, want)] + [_rel(a, r) for a, r in zip(grads, refs, strict=True)]
        assert max(errs) < tol, (amp, errs)


@pytest.mark.gpu
@requires_cuda
def test_graphed_step_with_triton_depthwise_tracks_cudnn() -> None:
    torch.manual_seed(0)
    base = build_model(arch="convnext_tiny", dropout=0.0, drop_path_rate=0.0)
    models = [copy.deepcopy(base).cuda().to(memory_format=torch.channels_last) for _ in range(2)]
    assert use_triton_depthwise(models[1]) == 18
    options = StepOptions(augment=False, amp_dtype=torch.bfloat16)
    steps = [
        TrainStep(
            m,
            None,
            torch.optim.AdamW(m.parameters(), lr=3e-4, capturable=True, fused=True),
            device="cuda",
            mode="graph",
            batch_size=64,
            options=options,
        )
        for m in models
    ]
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        images = torch.randn(64, 3, 64, 64, generator=gen).half().pin_memory()
        labels = (torch.rand(64, generator=gen) < 0.3).float().pin_memory()
        meta = torch.zeros(64, 0).pin_memory()
        a, b = (float(s.step(images, meta, labels)["loss"]) for s in steps)
        assert abs(a - b) <= 2e-2 * abs(a) + 1e-4, (a, b)
