"""The one training step (train/step.py) on the CPU: modes, a hand-written reference, padding,
the device metrics ring and the eval forward.

The GPU side (the same step captured in a CUDA graph) is ``test_cuda_graph.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from haloscope.train import step as tstep
from haloscope.train.step import (
    EvalStep,
    StepMetrics,
    StepOptions,
    TrainStep,
    make_eval_step,
    make_train_step,
    resolve_step_mode,
)


class TinyNet(nn.Module):
    """Conv + meta -> one logit: small enough for exact CPU references."""

    def __init__(self, num_meta: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8 + num_meta, 1)

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        feats = torch.relu(self.conv(images)).flatten(1)
        return self.head(torch.cat([feats, meta], dim=1)).squeeze(1)


def tiny_batch(n: int, seed: int, px: int = 8, scale: float = 3.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    images = (scale * torch.randn(n, 3, px, px, generator=g)).half()
    meta = torch.randn(n, 2, generator=g)
    labels = (torch.rand(n, generator=g) < 0.4).float()
    return images, meta, labels


def _reference_step(model: TinyNet, images, meta, labels, k, state, *, lr, wd, t) -> float:
    """Hand-written step: D4 by rot90/flip, focal by formula, clip to 1, AdamW by formula."""
    x = images.float()
    x = torch.stack(
        [torch.rot90(xi, int(ki) % 4, dims=(1, 2)) for xi, ki in zip(x, k, strict=True)]
    )
    x = torch.stack([xi.flip(-1) if ki >= 4 else xi for xi, ki in zip(x, k, strict=True)])
    model.zero_grad(set_to_none=True)
    p = torch.sigmoid(model(x, meta))
    pt = torch.where(labels == 1, p, 1 - p)
    alpha_t = torch.where(labels == 1, 0.25, 0.75)
    loss = (-alpha_t * (1 - pt) ** 2 * torch.log(pt)).mean()
    loss.backward()
    norm = math.sqrt(sum(float((q.grad**2).sum()) for q in model.parameters()))
    coef = min(1.0, 1.0 / (norm + 1e-6))
    b1, b2, eps = 0.9, 0.999, 1e-8
    with torch.no_grad():
        for q in model.parameters():
            g = q.grad * coef
            m, v = state.setdefault(q, (torch.zeros_like(q), torch.zeros_like(q)))
            m.mul_(b1).add_((1 - b1) * g)
            v.mul_(b2).add_((1 - b2) * g * g)
            q.mul_(1 - lr * wd)
            denom = (v / (1 - b2**t)).sqrt() + eps
            q.sub_(lr * (m / (1 - b1**t)) / denom)
    return float(loss.detach())


def test_auto_mode_is_eager_on_cpu_and_graph_needs_cuda() -> None:
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = make_train_step(model, None, opt, 8, device="cpu")
    assert isinstance(step, TrainStep) and step.mode == "eager"
    assert make_eval_step(model, device="cpu", batch_size=4).mode == "eager"
    assert resolve_step_mode("auto", "cpu") == "eager"
    assert resolve_step_mode("auto", "cuda", distributed=True) == "eager"
    assert resolve_step_mode("auto", "cuda", distributed=True, grad_sync=True) == "graph"
    assert resolve_step_mode("auto", "cpu", distributed=True, grad_sync=True) == "eager"
    with pytest.raises(ValueError, match="graphed step needs CUDA"):
        resolve_step_mode("graph", "cpu")
    with pytest.raises(ValueError, match="gradient sync"):
        resolve_step_mode("graph", "cuda", distributed=True)
    with pytest.raises(ValueError, match="CUDA"):
        TrainStep(model, None, opt, device="cpu", mode="graph", batch_size=8)
    with pytest.raises(ValueError, match="CUDA"):
        EvalStep(model, device="cpu", batch_size=8, mode="graph")
    with pytest.raises(ValueError, match="max_grad_norm"):
        StepOptions(max_grad_norm=-1.0)


def test_eager_step_equals_hand_written_step() -> None:
    torch.manual_seed(0)
    model, lr, wd = TinyNet(), 5e-2, 1e-2
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    gen, ref_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    step = TrainStep(
        model, None, opt, device="cpu", aug_generator=gen, options=StepOptions(channels_last=False)
    )
    state: dict = {}
    norms = []
    for t in range(1, 4):
        images, meta, labels = tiny_batch(6, seed=t)
        out = step.step(images, meta, labels)
        k = torch.randint(0, 8, (6,), generator=ref_gen)
        want = _reference_step(ref, images, meta, labels, k, state, lr=lr, wd=wd, t=t)
        assert float(out["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-7)
        norms.append(float(out["grad_norm"]))
        for got, exp in zip(model.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)
    assert max(norms) > 1.0  # the clip was active, so the test covers it
    values = step.metrics.read(3)  # the same numbers, kept on the device until read
    assert values[:, 1].tolist() == pytest.approx(norms, rel=0)


def test_zero_weight_padding_equals_the_valid_subset() -> None:
    torch.manual_seed(1)
    full = TinyNet()
    sub = copy.deepcopy(full)
    opts = StepOptions(augment=False)
    steps = [
        TrainStep(m, None, torch.optim.AdamW(m.parameters(), lr=1e-2), device="cpu", options=opts)
        for m in (full, sub)
    ]
    images, meta, labels = tiny_batch(6, seed=3)
    weight = torch.tensor([1.0, 1, 1, 1, 0, 0])
    a = steps[0].step(images, meta, labels, weight)
    b = steps[1].step(images[:4], meta[:4], labels[:4])
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
    for p, q in zip(full.parameters(), sub.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_every_mode_runs_the_one_step_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager (and, on CUDA, the graph's capture) go through ``train_step`` itself."""
    calls: list[StepOptions] = []
    real = tstep.train_step

    def spy(*args, **kwargs):
        calls.append(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tstep, "train_step", spy)
    model = TinyNet()
    step = make_train_step(
        model,
        None,
        torch.optim.AdamW(model.parameters()),
        6,
        device="cpu",
        augment=False,
        channels_last=False,
    )
    step.step(*tiny_batch(6, seed=5))
    assert calls == [StepOptions(augment=False, amp_dtype=None, channels_last=False)]


def test_step_metrics_ring_reads_windows_and_wraps() -> None:
    metrics = StepMetrics(3, "cpu")
    for i in range(2):
        metrics.record(torch.tensor(float(i)), torch.tensor(10.0 + i))
    assert metrics.read(2).tolist() == [[0.0, 10.0], [1.0, 11.0]]
    assert int(metrics.count) == 0  # the next window starts at row 0
    for i in range(4):  # one more than the ring: the oldest row is overwritten
        metrics.record(torch.tensor(float(i)), torch.tensor(0.0))
    assert metrics.read(3)[:, 0].tolist() == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="0..3"):
        metrics.read(4)
    restore = metrics.snapshot()
    metrics.record(torch.tensor(9.0), torch.tensor(9.0))
    restore()
    assert int(metrics.count) == 0 and metrics.read(1).tolist() == [[3.0, 0.0]]


def test_step_metrics_async_read_is_a_snapshot_of_its_window() -> None:
    metrics = StepMetrics(4, "cpu")
    for i in range(3):
        metrics.record(torch.tensor(float(i)), torch.tensor(1.0))
    pending = metrics.read_async(3)
    assert int(metrics.count) == 0  # the next window starts at row 0 at once
    for i in range(2):  # later steps overwrite rows 0-1 before the read is collected
        metrics.record(torch.tensor(100.0 + i), torch.tensor(2.0))
    assert pending()[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert metrics.read_async(2)()[:, 0].tolist() == [100.0, 101.0]
    with pytest.raises(ValueError, match="0..4"):
        metrics.read_async(5)


def test_eval_step_restores_train_mode_and_matches_the_model() -> None:
    model = TinyNet().train()
    images, meta, _ = tiny_batch(7, seed=4)
    got = EvalStep(model, device="cpu", batch_size=7, channels_last=False).logits(images, meta)
    assert model.training
    with torch.no_grad():
        want = model.eval()(images.float(), meta)
    torch.testing.assert_close(got, want)
