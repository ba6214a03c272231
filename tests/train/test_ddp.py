"""2-process gloo DDP (torchrun) against 1 process on the combined batch, and a 2-rank run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.train_fixtures import tiny_argv

TORCHRUN = Path(sys.executable).parent / "torchrun"
WORKER = Path(__file__).with_name("ddp_step_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _torchrun(nproc: int, *args: str, **env_extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env_extra}
    cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.dist
@pytest.mark.parametrize("how", ["ddp", "sync"])
def test_two_rank_step_equals_one_rank_on_combined_batch(tmp_path: Path, how: str) -> None:
    """Tolerance: 1e-5 absolute on weights after 3 AdamW steps (fp32 reduction order only).

    ``sync`` is the gradient all-reduce that the graphed step captures on several GPUs
    (``make_grad_sync``), checked here eagerly on gloo against the same single-rank run.
    """
    _torchrun(1, str(WORKER), str(tmp_path / "one.pt"), how)
    _torchrun(2, str(WORKER), str(tmp_path / "two.pt"), how)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    init = one["init"]
    moved = 0
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], atol=1e-5, rtol=0), key
        moved += int(not torch.equal(value, init[key]))
    assert moved > 10  # the steps really changed the weights
    for name, grad in one["grads"].items():  # sync: the last step's averaged gradients
        assert torch.allclose(grad, two["grads"][name], rtol=1e-4, atol=1e-8), name
    assert len(one["grads"]) == (0 if how == "ddp" else len(list(init)) - 2)
    assert two["gathered"].tolist() == [0.0, 1.0, 10.0, 11.0, 12.0]  # unequal lengths, rank order


@pytest.mark.dist
def test_two_rank_cli_run_validates_the_whole_split(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    argv = tiny_argv(
        tiny_shards, out, "--epochs", "1", "--max-steps-per-epoch", "2", "--num-workers", "0"
    )
    _torchrun(2, "-m", "haloscope", "train", *argv)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(val) == 1 and val[0]["val/num"] == 64  # 32 per rank, gathered, no padding
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["progress"]["world_size"] == 2 and last["progress"]["global_step"] == 2


@pytest.mark.dist
def test_two_rank_kill_and_resume_is_bitwise_identical(tiny_shards: Path, tmp_path: Path) -> None:
    """2 gloo ranks, D4 + dropout + drop-path on: SIGTERM mid-epoch 1, --resume, and the final
    weights equal an uninterrupted run bit for bit (each rank resumes its own RNG streams).

    Under torchrun the ranks agree on a stop when they read the step metrics (every
    --sync-every steps): 1 here, so the stop lands mid-epoch, in the step of the signal."""
    worker = Path(__file__).with_name("ddp_resume_worker.py")
    extra = ("--max-steps-per-epoch", "3", "--ckpt-every-steps", "0", "--num-workers", "0",
             "--sync-every", "1")  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    _torchrun(2, str(worker), *tiny_argv(tiny_shards, full, *extra))
    _torchrun(2, str(worker), *tiny_argv(tiny_shards, part, *extra), KILL_AT="5")
    mid = torch.load(part / "last.pt", weights_only=True)
    assert mid["progress"]["global_step"] == 5 and mid["progress"]["step_in_epoch"] == 2
    assert len(mid["rng_per_rank"]) == 2
    assert not torch.equal(mid["rng_per_rank"][0]["augment"], mid["rng_per_rank"][1]["augment"])
    _torchrun(2, str(worker), *tiny_argv(tiny_shards, part, *extra, "--resume"))
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(part / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
