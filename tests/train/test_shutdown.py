"""The training state is gone before the process group is destroyed.

On 2 H100s a graphed torchrun run (the CUDA graph captures the gradient all-reduce) hung in
``destroy_process_group`` while the graph, still referenced from ``run_training``'s frame,
held NCCL's communicator. ``dist.shutdown`` collects garbage before destroying the group;
this checks that ``run_training`` no longer holds the state then (the GPU side is
``tests/bench/test_multigpu.py``).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from haloscope.train import run as trun
from haloscope.train.cli import main
from tests.train.train_fixtures import tiny_argv


def test_state_and_context_are_freed_before_shutdown(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs: list[weakref.ref] = []
    alive_at_shutdown: list[bool] = []
    real_setup = trun._setup

    def setup(cfg, env, stop):
        state, ctx = real_setup(cfg, env, stop)
        refs.extend([weakref.ref(state), weakref.ref(state.raw_model), weakref.ref(ctx)])
        return state, ctx

    def shutdown(env) -> None:  # the real one collects garbage first, as here
        gc.collect()
        alive_at_shutdown.extend(ref() is not None for ref in refs)

    monkeypatch.setattr(trun, "_setup", setup)
    monkeypatch.setattr(trun, "shutdown", shutdown)
    argv = tiny_argv(tiny_shards, tmp_path / "run", "--epochs", "1", "--max-steps-per-epoch", "2")
    assert main(argv) == 0
    assert len(refs) == 3
    assert alive_at_shutdown == [False, False, False]
