"""The moving average of the weights (train/ema.py, ``--ema-decay``).

CPU: the update against a hand-computed reference (warm-up included) in the eager step; the
snapshot a graph's warm-up is undone with; with EMA on, validation and best.pt use the
averaged weights, a kill-and-resume ends bit-identical in weights and averaged weights, and
inference loads them; with EMA off no ``ema_model`` is written and a checkpoint from before
the option resumes; a bad decay is one line from the CLI. GPU (``-m gpu``): the graphed step
updates the average like the eager one.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haloscope.train import loop as tloop
from haloscope.train.checkpoint import load_for_inference, save_checkpoint
from haloscope.train.cli import main
from haloscope.train.ema import WeightEMA
from haloscope.train.model import build_model
from haloscope.train.step import StepOptions, TrainStep
from tests.train.test_checkpoint import ARGS, _payload
from tests.train.test_resume import _kill_at, _load, _losses
from tests.train.test_step import TinyNet, tiny_batch
from tests.train.train_fixtures import tiny_argv

PLAIN = StepOptions(augment=False, channels_last=False)


def _ema_reference(avg: list[float], params: list[float], decay: float, t: int) -> list[float]:
    """One update by the formula, in Python floats (float64)."""
    d = min(decay, (1 + t) / (10 + t))
    return [d * a + (1 - d) * p for a, p in zip(avg, params, strict=True)]


def _flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def _equal_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eager_step_updates_the_average_like_the_formula() -> None:
    """decay 0.3: steps 1-2 use the warm-up decay (2/11, 3/12), steps 3-5 the clamp 0.3."""
    torch.manual_seed(0)
    model = TinyNet()
    model.register_buffer("scale", torch.tensor([2.0]))
    ema = WeightEMA(model, 0.3)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-2)
    step = TrainStep(model, None, opt, device="cpu", options=PLAIN, ema=ema)
    avg = _flat(model)
    for t in range(1, 6):
        step.step(*tiny_batch(6, seed=t))
        model.scale.add_(1.0)  # a buffer the model changes: the average copies it
        avg = _ema_reference(avg, _flat(model), 0.3, t)
        assert _flat(ema.module) == pytest.approx(avg, rel=1e-5, abs=1e-7), f"step {t}"
        assert float(ema.num_updates) == t
    assert float(ema.module.scale) == 6.0  # copied at the last update (before the last add_)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert _flat(ema.module) != _flat(model)


def test_snapshot_restores_the_average_in_place() -> None:
    model = TinyNet()
    ema = WeightEMA(model, 0.9)
    before = [t.clone() for t in ema.module.parameters()]
    addresses = [t.data_ptr() for t in ema.module.parameters()]
    restore = ema.snapshot()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    restore()
    assert float(ema.num_updates) == 0
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), before, strict=True))
    assert [t.data_ptr() for t in ema.module.parameters()] == addresses
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        WeightEMA(model, 1.0)


def test_validation_and_best_pt_use_the_average(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[dict[str, torch.Tensor]] = []
    real = tloop.validate

    def spy(model, batches, env, **kwargs):
        assert kwargs["step"].module is model  # the eval step scores the model passed here
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, batches, env, **kwargs)

    monkeypatch.setattr(tloop, "validate", spy)
    run = tmp_path / "r"
    flags = ("--epochs", "1", "--max-steps-per-epoch", "3", "--ema-decay", "0.9")
    assert main(tiny_argv(tiny_shards, run, *flags)) == 0
    best = _load(run / "best.pt")
    assert len(scored) == 1 and _equal_state(scored[0], best["ema_model"])
    assert not _equal_state(best["ema_model"], best["model"])
    model, info = load_for_inference(run / "best.pt")
    assert info["weights"] == "ema_model"
    assert _equal_state(model.state_dict(), best["ema_model"])


def test_kill_and_resume_with_ema_is_bitwise_identical(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("--ckpt-every-steps", "0", "--max-steps-per-epoch", "3", "--ema-decay", "0.9")
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(tiny_argv(tiny_shards, full, *extra)) == 0
    with monkeypatch.context() as m:
        _kill_at(m, 2)  # epoch 0, mid-epoch
        assert main(tiny_argv(tiny_shards, part, *extra)) == 0
    assert _load(part / "last.pt")["progress"]["global_step"] == 2
    assert main(tiny_argv(tiny_shards, part, *extra, "--resume")) == 0
    for name in ("last.pt", "best.pt"):
        a, b = _load(full / name), _load(part / name)
        assert a["progress"] == b["progress"]
        assert _equal_state(a["model"], b["model"]) and _equal_state(a["ema_model"], b["ema_model"])
    assert _losses(full) == _losses(part)


def test_ema_off_writes_no_average_and_old_checkpoints_resume(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written before --ema-decay existed (no optim.ema_decay in its config)
    resumes as a run with EMA off."""
    run = tmp_path / "r"
    extra = ("--epochs", "1", "--ckpt-every-steps", "0", "--max-steps-per-epoch", "3")
    with monkeypatch.context() as m:
        _kill_at(m, 2)
        assert main(tiny_argv(tiny_shards, run, *extra)) == 0
    old = _load(run / "last.pt")
    assert "ema_model" not in old
    config = json.loads(old["config"])
    del config["optim"]["ema_decay"]
    old["config"] = json.dumps(config)
    save_checkpoint(run / "last.pt", old)
    assert main(tiny_argv(tiny_shards, run, *extra, "--resume")) == 0
    last = _load(run / "last.pt")
    assert last["progress"]["global_step"] == 3 and "ema_model" not in last
    assert load_for_inference(run / "last.pt")[1]["weights"] == "model"


def test_load_for_inference_prefers_the_average(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # setup_logging (run by CLI tests in this process) stops propagation to caplog's handler
    monkeypatch.setattr(logging.getLogger("haloscope"), "propagate", True)
    torch.manual_seed(0)
    model, average = build_model(**ARGS).eval(), build_model(**ARGS).eval()
    payload = {**_payload(model), "ema_model": average.state_dict()}
    with caplog.at_level(logging.INFO, logger="haloscope.train.checkpoint"):
        loaded, info = load_for_inference(save_checkpoint(tmp_path / "best.pt", payload))
    assert info["weights"] == "ema_model"
    assert "moving average of the weights" in caplog.text
    assert _equal_state(loaded.state_dict(), average.state_dict())
    loaded, info = load_for_inference(save_checkpoint(tmp_path / "raw.pt", _payload(model)))
    assert info["weights"] == "model" and _equal_state(loaded.state_dict(), model.state_dict())


def test_a_bad_decay_is_one_line_from_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "train", "--shards", "s", "--out", "o"]
        + ["--ema-decay", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "haloscope train: error: --ema-decay must be 0 (off) or in (0, 1), got 1.5"
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_step_updates_the_average_like_the_eager_one() -> None:
    torch.manual_seed(0)
    models = [TinyNet().cuda() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    emas = [WeightEMA(m, 0.5) for m in models]
    steps = [
        TrainStep(
            m,
            None,
            torch.optim.AdamW(m.parameters(), lr=5e-2),
            device="cuda",
            mode=mode,
            batch_size=6,
            options=PLAIN,
            ema=ema,
        )
        for m, ema, mode in zip(models, emas, ("eager", "graph"), strict=True)
    ]
    for t in range(1, 8):
        images, meta, labels = (x.pin_memory() for x in tiny_batch(6, seed=t))
        for step in steps:
            step.step(images, meta, labels)
    eager, graphed = (copy.deepcopy(e.module).cpu() for e in emas)
    assert [float(e.num_updates) for e in emas] == [7.0, 7.0]  # the warm-up was undone
    for a, b in zip(eager.parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
