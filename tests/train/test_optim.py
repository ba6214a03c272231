"""Weight decay only on weights; warmup then cosine per step."""

from __future__ import annotations

import pytest

from haloscope.train.model import build_model
from haloscope.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_no_decay_on_norms_biases_and_buffers() -> None:
    model = build_model(
        arch="convnext_atto", meta_cols=["psfsize_r"], meta_mean=[1.0], meta_std=[0.5]
    )
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert any("norm" in n for n in no_decay_names) and any(
        n.endswith(".bias") for n in no_decay_names
    )
    assert "classifier.0.weight" in [names[id(p)] for p in decay["params"]]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    buffers = {id(b) for b in model.buffers()}
    assert not buffers & {id(p) for g in (decay, no_decay) for p in g["params"]}


def test_warmup_then_cosine() -> None:
    kw = {"total_steps": 110, "warmup": 10, "min_ratio": 0.01}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.505)
    assert lr_factor(110, **kw) == pytest.approx(0.01)
    assert lr_factor(500, **kw) == pytest.approx(0.01)
    values = [lr_factor(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_steps_per_optimiser_step() -> None:
    model = build_model(arch="convnext_atto")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    sched = build_scheduler(opt, total_steps=20, warmup=4, lr=1e-3, min_lr=1e-5)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[3] == pytest.approx(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"]
