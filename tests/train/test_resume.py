"""Kill-and-resume: SIGTERM mid-epoch, --resume, and the same final weights bit for bit (CPU)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from haloscope.errors import CheckpointError, ConfigError
from haloscope.train import step as tstep
from haloscope.train.cli import main
from tests.train.train_fixtures import tiny_argv


def _kill_at(monkeypatch: pytest.MonkeyPatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Make the real signal arrive during global step ``step`` (1-based)."""
    real, calls = tstep.train_step, {"n": 0}

    def step_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(tstep, "train_step", step_then_signal)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["global_step"]: r["train/loss"] for r in rows if r["kind"] == "train"}


def test_kill_and_resume_is_bitwise_identical(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dropout, drop-path and D4 all on; a loader worker process; 4 steps per epoch
    extra = ("--num-workers", "1", "--ckpt-every-steps", "0", "--max-steps-per-epoch", "4")
    full = tmp_path / "full"
    assert main(tiny_argv(tiny_shards, full, *extra)) == 0

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        _kill_at(m, 3)  # epoch 0, mid-epoch
        assert main(tiny_argv(tiny_shards, part, *extra)) == 0
    mid = _load(part / "last.pt")
    assert mid["progress"] == {"epoch": 0, "step_in_epoch": 3, "global_step": 3, "world_size": 1}
    assert mid["loader"]["reader"]["batches_consumed"] == 3
    with monkeypatch.context() as m:
        _kill_at(m, 3)  # global step 6: epoch 1, after a validation and best.pt
        assert main(tiny_argv(tiny_shards, part, *extra, "--resume")) == 0
    assert _load(part / "last.pt")["progress"]["global_step"] == 6
    assert main(tiny_argv(tiny_shards, part, *extra, "--resume")) == 0

    a, b = _load(full / "last.pt"), _load(part / "last.pt")
    assert (
        a["progress"]
        == b["progress"]
        == {"epoch": 2, "step_in_epoch": 0, "global_step": 8, "world_size": 1}
    )
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    timeless = [{k: v for k, v in d["val_metrics"].items() if k != "val/wall_s"} for d in (a, b)]
    assert timeless[0] == timeless[1]
    assert a["early_stopping"] == b["early_stopping"]
    for key, value in _load(full / "best.pt")["model"].items():
        assert torch.equal(value, _load(part / "best.pt")["model"][key]), key
    full_losses, part_losses = _losses(full), _losses(part)
    assert all(part_losses[s] == full_losses[s] for s in full_losses)


def test_sigint_saves_and_exits_130(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NOTE: whatever this process inherited (default_int_handler, or SIG_IGN when started in
    # the background by a shell) is what the run must leave behind
    before = signal.getsignal(signal.SIGINT)
    _kill_at(monkeypatch, 2, signal.SIGINT)
    assert main(tiny_argv(tiny_shards, tmp_path / "r", "--num-workers", "0")) == 130
    assert _load(tmp_path / "r" / "last.pt")["progress"]["global_step"] == 2
    assert not (tmp_path / "r" / "best.pt").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_resume_refusals(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "r"
    with pytest.raises(CheckpointError, match="does not exist"):
        main(tiny_argv(tiny_shards, run, "--resume"))
    _kill_at(monkeypatch, 1)
    assert main(tiny_argv(tiny_shards, run, "--num-workers", "0")) == 0
    with pytest.raises(ConfigError, match="already holds last.pt"):
        main(tiny_argv(tiny_shards, run))
    with pytest.raises(ConfigError, match=r"optim.lr: checkpoint 0.001, now 0.002"):
        main(tiny_argv(tiny_shards, run, "--resume", "--lr", "2e-3"))
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        main(tiny_argv(tiny_shards, run, "--resume"))


def test_a_fresh_start_replaces_the_earlier_runs_files(tiny_shards: Path, tmp_path: Path) -> None:
    """--overwrite starts over: metrics.jsonl/csv hold one run's rows, not both runs'."""
    run = tmp_path / "r"
    assert main(tiny_argv(tiny_shards, run, "--num-workers", "0")) == 0
    first = (run / "metrics.jsonl").read_text()
    first_val = (run / "val_metrics.csv").read_text()
    (run / "notes.txt").write_text("the user's own file")
    assert main(tiny_argv(tiny_shards, run, "--num-workers", "0", "--overwrite")) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # each step once: the first run's rows are gone
    assert len(rows) == len(first.splitlines())
    assert (run / "val_metrics.csv").read_text().count("\n") == first_val.count("\n")
    assert (run / "notes.txt").read_text() == "the user's own file"  # only the run's files
