"""Graph-captured vs eager training/inference steps (train/cuda_graph.py, train/graph_io.py).

CPU tests: ``auto`` takes the eager path, and the eager step equals a hand-written step
(D4 from torch.rot90/flip, focal loss by formula, global-norm clip, AdamW by formula).
GPU tests (``-m gpu``): the graphed step reproduces the eager one over 20 steps within a
bf16 tolerance, pads short batches exactly, and draws fresh randomness on every replay.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from haloscope.train.cuda_graph import (
    EagerPredictStep,
    EagerTrainStep,
    GraphedPredictStep,
    GraphedTrainStep,
    make_predict_step,
    make_train_step,
    resolve_step_mode,
)
from haloscope.train.graph_io import per_sample_loss
from haloscope.train.loss import build_loss, focal_loss

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class TinyNet(nn.Module):
    """Conv + meta -> one logit: small enough for exact CPU references."""

    def __init__(self, num_meta: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8 + num_meta, 1)

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        feats = torch.relu(self.conv(images)).flatten(1)
        return self.head(torch.cat([feats, meta], dim=1)).squeeze(1)


def _batch(n: int, seed: int, px: int = 8, scale: float = 3.0) -> tuple[torch.Tensor, ...]:
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


def test_auto_mode_takes_the_eager_path_on_cpu() -> None:
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = make_train_step(model, None, opt, 8, device="cpu")
    assert type(step) is EagerTrainStep and not isinstance(step, GraphedTrainStep)
    assert type(make_predict_step(model, device="cpu")) is EagerPredictStep
    assert resolve_step_mode("auto", "cpu") == "eager"
    assert resolve_step_mode("auto", "cuda", distributed=True) == "eager"
    assert resolve_step_mode("auto", "cuda", distributed=True, grad_sync=True) == "graph"
    assert resolve_step_mode("auto", "cpu", distributed=True, grad_sync=True) == "eager"
    with pytest.raises(ValueError, match="graphed step needs CUDA"):
        resolve_step_mode("graph", "cpu")
    with pytest.raises(ValueError, match="gradient sync"):
        resolve_step_mode("graph", "cuda", distributed=True)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedTrainStep(model, None, opt, 8, device="cpu")


def test_eager_step_equals_hand_written_step() -> None:
    torch.manual_seed(0)
    model, lr, wd = TinyNet(), 5e-2, 1e-2
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    gen, ref_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    step = EagerTrainStep(model, None, opt, device="cpu", aug_generator=gen, channels_last=False)
    state: dict = {}
    norms = []
    for t in range(1, 4):
        images, meta, labels = _batch(6, seed=t)
        out = step.step(images, meta, labels)
        k = torch.randint(0, 8, (6,), generator=ref_gen)
        want = _reference_step(ref, images, meta, labels, k, state, lr=lr, wd=wd, t=t)
        assert float(out["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-7)
        norms.append(float(out["grad_norm"]))
        for got, exp in zip(model.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)
    assert max(norms) > 1.0  # the clip was active, so the test covers it


def test_zero_weight_padding_equals_the_valid_subset() -> None:
    torch.manual_seed(1)
    full, sub = TinyNet(), None
    sub = copy.deepcopy(full)
    steps = [EagerTrainStep(m, None, torch.optim.AdamW(m.parameters(), lr=1e-2), device="cpu",
                            augment=False) for m in (full, sub)]  # fmt: skip
    images, meta, labels = _batch(6, seed=3)
    weight = torch.tensor([1.0, 1, 1, 1, 0, 0])
    a = steps[0].step(images, meta, labels, weight)
    b = steps[1].step(images[:4], meta[:4], labels[:4])
    assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
    for p, q in zip(full.parameters(), sub.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_per_sample_loss_is_the_elementwise_loss_of_the_mean() -> None:
    logits, labels = torch.randn(37) * 4, (torch.rand(37) < 0.3).float()
    per = per_sample_loss(build_loss("focal"), logits, labels)
    assert per.shape == (37,)
    torch.testing.assert_close(per.mean(), focal_loss(logits, labels))
    torch.testing.assert_close(per[5], focal_loss(logits[5:6], labels[5:6]))


def test_eager_predict_chunks_and_restores_train_mode() -> None:
    model = TinyNet().train()
    images, meta, _ = _batch(7, seed=4)
    got = EagerPredictStep(model, device="cpu", batch_size=3).predict(images, meta)
    assert model.training
    with torch.no_grad():
        want = model.eval()(images.float(), meta)
    torch.testing.assert_close(got, want)


# ---- GPU: graph vs eager ---------------------------------------------------------------


def _convnext_pair(seed: int = 0):
    from haloscope.train.model import build_model
    from haloscope.train.optim import param_groups

    torch.manual_seed(seed)
    model = build_model(arch="convnext_tiny", meta_cols=("psfsize_r", "psfdepth_r"),
                        dropout=0.0, drop_path_rate=0.0)  # fmt: skip
    models = [copy.deepcopy(model).cuda().to(memory_format=torch.channels_last) for _ in range(2)]
    # as the trainer builds it (fused, not capturable): the graphed step switches it itself
    opts = [torch.optim.AdamW(param_groups(m, 1e-2), lr=3e-4, fused=True) for m in models]
    return models, opts


def _gpu_batches(n: int, batch: int) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for i in range(n):
        images, _, labels = _batch(batch, seed=100 + i, px=64, scale=1.0)
        meta = torch.randn(batch, 2) + torch.tensor([1.3, 24.0])
        out.append((images.pin_memory(), meta.pin_memory(), labels.pin_memory()))
    return out


@pytest.mark.gpu
@requires_cuda
def test_graphed_step_matches_eager_over_20_steps() -> None:
    (m_e, m_g), (o_e, o_g) = _convnext_pair()
    start = [p.detach().clone() for p in m_e.parameters()]
    kw = {"device": "cuda", "augment": False, "amp_dtype": torch.bfloat16}
    eager = EagerTrainStep(m_e, None, o_e, **kw)
    graphed = GraphedTrainStep(m_g, None, o_g, 64, **kw)
    losses = []
    for images, meta, labels in _gpu_batches(20, 64):
        le = float(eager.step(images, meta, labels)["loss"])
        lg = float(graphed.step(images, meta, labels)["loss"])
        losses.append((le, lg))
    worst_loss = max(abs(a - b) / max(abs(a), 1e-3) for a, b in losses)
    pairs = list(zip(m_e.parameters(), m_g.parameters(), start, strict=True))
    with torch.no_grad():
        diff = math.sqrt(sum(float((p - q).float().norm() ** 2) for p, q, _ in pairs))
        moved = math.sqrt(sum(float((p - s).float().norm() ** 2) for p, _, s in pairs))
    print(
        f"graph vs eager, 20 steps of convnext_tiny b64: max rel loss diff {worst_loss:.2e}, "
        f"|w_graph - w_eager| / |w_eager - w_0| = {diff / moved:.2e}"
    )
    assert worst_loss < 2e-2  # bf16 autocast tolerance on the loss
    assert moved > 0 and diff < 0.05 * moved  # both moved the same way, within 5%


@pytest.mark.gpu
@requires_cuda
def test_graphed_padding_and_fresh_randomness_per_replay() -> None:
    (m_e, m_g), (o_e, o_g) = _convnext_pair(seed=1)
    for opt in (o_e, o_g):
        for group in opt.param_groups:
            group["lr"] = 0.0  # weights stay put, so replays differ only by their draws
    images, meta, labels = _gpu_batches(1, 64)[0]
    eager = EagerTrainStep(m_e, None, o_e, device="cuda", augment=False, amp_dtype=torch.bfloat16)
    graphed = GraphedTrainStep(m_g, None, o_g, 64, device="cuda", augment=True,
                               amp_dtype=torch.bfloat16)  # fmt: skip
    draws = {round(float(graphed.step(images, meta, labels)["loss"]), 6) for _ in range(6)}
    assert all(g["capturable"] and torch.is_tensor(g["lr"]) for g in o_g.param_groups)
    assert len(draws) > 1  # D4 draws change between replays
    padded = GraphedTrainStep(m_g, None, o_g, 64, device="cuda", augment=False,
                              amp_dtype=torch.bfloat16)  # fmt: skip
    got = float(padded.step(images[:40], meta[:40], labels[:40])["loss"])
    want = float(eager.step(images[:40], meta[:40], labels[:40])["loss"])
    assert padded.num_padded_samples == 24
    assert got == pytest.approx(want, rel=2e-2)


@pytest.mark.gpu
@requires_cuda
def test_graphed_predict_matches_eager_with_a_padded_tail() -> None:
    (model, _), _ = _convnext_pair(seed=2)
    images, meta, _ = _gpu_batches(1, 300)[0]
    eager = EagerPredictStep(model, device="cuda", batch_size=128, amp_dtype=torch.bfloat16)
    graphed = GraphedPredictStep(model, device="cuda", batch_size=128, amp_dtype=torch.bfloat16)
    want, got = eager.predict(images, meta), graphed.predict(images, meta)
    assert got.shape == (300,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_resumed_graph_optimizer_state_moves_to_the_device() -> None:
    """A graphed run's checkpoint loads with a CPU lr tensor and CPU step counts while its
    groups already say capturable=True: both must still move to the graph's device ("meta"
    stands in for CUDA here)."""
    from haloscope.train.cuda_graph import _make_capturable

    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3), capturable=True)
    for p in model.parameters():
        opt.state[p]["step"] = torch.tensor(7.0)
    _make_capturable(opt, torch.device("meta"))
    group = opt.param_groups[0]
    assert group["lr"].device.type == "meta" and group["capturable"]
    assert all(opt.state[p]["step"].device.type == "meta" for p in model.parameters())


@pytest.mark.gpu
@requires_cuda
def test_graphed_resume_from_a_graphed_runs_checkpoint(tmp_path) -> None:
    """A graphed run's optimiser state (capturable, tensor lr), saved and loaded on the CPU
    as --resume does, captures again and continues like the uninterrupted graphed run."""
    (m_a, m_b), (o_a, o_b) = _convnext_pair(seed=2)
    kw = {"device": "cuda", "augment": False, "amp_dtype": torch.bfloat16}
    batches = _gpu_batches(6, 64)
    full = GraphedTrainStep(m_a, None, o_a, 64, **kw)
    first = GraphedTrainStep(m_b, None, o_b, 64, **kw)
    for images, meta, labels in batches[:3]:
        full.step(images, meta, labels)
        first.step(images, meta, labels)
    torch.save({"model": m_b.state_dict(), "opt": o_b.state_dict()}, tmp_path / "c.pt")
    payload = torch.load(tmp_path / "c.pt", map_location="cpu", weights_only=True)
    assert payload["opt"]["param_groups"][0]["lr"].device.type == "cpu"  # what --resume meets
    (m_c, _), (o_c, _) = _convnext_pair(seed=3)
    m_c.load_state_dict(payload["model"])
    o_c.load_state_dict(payload["opt"])
    resumed = GraphedTrainStep(m_c, None, o_c, 64, **kw)
    mid = [p.detach().clone() for p in m_a.parameters()]
    for images, meta, labels in batches[3:]:
        la = float(full.step(images, meta, labels)["loss"])
        lc = float(resumed.step(images, meta, labels)["loss"])
        assert abs(la - lc) <= 2e-2 * max(abs(la), 1e-3)
    triples = list(zip(m_a.parameters(), m_c.parameters(), mid, strict=True))
    with torch.no_grad():
        diff = math.sqrt(sum(float((a - c).float().norm() ** 2) for a, c, _ in triples))
        moved = math.sqrt(sum(float((a - m).float().norm() ** 2) for a, _, m in triples))
    # the last 3 steps moved both the same way: a lost Adam state or lr would not
    assert moved > 0 and diff < 0.05 * moved
