"""The run's start: the loaders' workers fork and read while the graphed steps are captured.

``ShardLoader`` starts its workers at ``iter()`` (not at the first batch), so ``fit`` can
start the train and val loaders, then capture the train and eval graphs from zero batches of
the readers' shapes while the workers read their first batches (on one H200 the loader's
start was 1.7 s of GPU idle before the first step), all before the run's clock starts (the
setup, ``time/setup_s``). On the CPU the steps are eager and ``prepare`` has nothing to
capture; these tests check the order and the shapes ``fit`` hands over, the workers' start
and shutdown, and the setup's keys outside the clock.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from haloscope.shards.read import ShardReader, build_loader
from haloscope.train import loop
from haloscope.train.cli import main
from haloscope.train.step import EvalStep, TrainStep
from tests.train.train_fixtures import tiny_argv


def _alive(pids: set[int], seconds: float) -> set[int]:
    """Which of ``pids`` are still live children, polled until none is or time is up."""
    deadline = time.monotonic() + seconds
    while True:
        alive = {p.pid for p in multiprocessing.active_children()} & pids
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def test_loader_workers_fork_at_iter_and_stop_when_closed_unread(tiny_shards: Path) -> None:
    before = {p.pid for p in multiprocessing.active_children()}
    reader = ShardReader(tiny_shards / "train", batch_size=16)
    batches = iter(build_loader(reader, num_workers=2, pin_memory=False))
    workers = {p.pid for p in multiprocessing.active_children()} - before
    assert len(workers) == 2  # forked before any next()
    batches.close()  # a run stopped before its first validation closes the unread val loader
    assert not _alive(workers, 10)


def test_reader_zeros_batch_has_the_batches_shapes(tiny_shards: Path) -> None:
    reader = ShardReader(tiny_shards / "train", batch_size=16)
    real = next(iter(build_loader(reader, num_workers=0, pin_memory=False)))
    zeros = reader.zeros_batch(3)
    for key in ("image", "label", "meta", "valid"):
        assert zeros[key].dtype == real[key].dtype
        assert zeros[key].shape[1:] == real[key].shape[1:] and zeros[key].shape[0] == 3
        assert not zeros[key].any()


def test_fit_starts_both_loaders_then_prepares_the_steps_before_the_first_step(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[Any, ...]] = []
    real_start, real_step = loop.start_batches, TrainStep.step

    def start(batches):
        events.append(("start", type(batches).__name__, len(batches.reader.zeros_batch())))
        return real_start(batches)

    def prepare(kind):
        def record(self, images: torch.Tensor, meta: torch.Tensor) -> None:
            events.append((kind, tuple(images.shape), images.dtype, tuple(meta.shape)))

        return record

    def step(self, *args, **kwargs):
        events.append(("step",))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(loop, "start_batches", start)
    monkeypatch.setattr(TrainStep, "prepare", prepare("prepare train"))
    monkeypatch.setattr(EvalStep, "prepare", prepare("prepare eval"))
    monkeypatch.setattr(TrainStep, "step", step)
    run = tmp_path / "run"
    assert main(tiny_argv(tiny_shards, run, "--epochs", "1", "--max-steps-per-epoch", "2")) == 0
    num_meta = ShardReader(tiny_shards / "train", batch_size=16).num_meta
    template = ((1, 3, 64, 64), torch.float16, (1, num_meta))
    assert events[:5] == [
        ("start", "ShardLoader", 4),  # train
        ("start", "ShardLoader", 4),  # val, started now, read at the first validation
        ("prepare train", *template),
        ("prepare eval", *template),
        ("step",),
    ]
    assert [e[0] for e in events].count("start") == 2  # no second val loader at validation
    timing = json.loads((run / "time_breakdown.json").read_text())
    setup = [timing[f"time/setup.{k}_s"] for k in ("loader_start", "capture", "eval_capture")]
    assert min(setup) >= 0 and timing["time/setup_s"] == pytest.approx(sum(setup), abs=1e-3)
    phases = ("step", "loader_wait", "validation", "checkpoint", "other")  # the clock: no setup
    assert sum(timing[f"time/{k}_s"] for k in phases) == pytest.approx(
        timing["time/total_s"], abs=1e-3
    )
