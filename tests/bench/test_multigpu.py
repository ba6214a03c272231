"""``haloscope bench multigpu``: option checks on CPU; the 2-GPU run under ``-m gpu``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haloscope.bench.gpu import write_random_shards
from haloscope.bench.multigpu import _efficiency, parse_options
from haloscope.errors import ConfigError
from haloscope.train.dist import DistEnv, make_grad_sync


def test_efficiency_is_throughput_over_n_times_the_smallest_run() -> None:
    runs = {1: {"x": 100.0}, 2: {"x": 190.0}, 4: {"x": 300.0}}
    eff = _efficiency(runs, lambda r: r["x"])
    assert eff["1"]["efficiency"] == 1.0
    assert eff["2"]["efficiency"] == 0.95
    assert eff["4"]["efficiency"] == 0.75
    assert eff["4"]["img_per_s"] == 300.0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--modes", "graph,compile"], "--modes"),
        (["--steps", "0"], "--steps"),
        (["--workers", "-1"], "--workers"),
        (["--shards", "/nonexistent/shards"], "--shards"),
    ],
)
def test_bad_options_are_config_errors(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_options(argv)


def test_one_process_needs_no_gradient_sync() -> None:
    assert make_grad_sync(DistEnv()) is None


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_bench_checks_hold(tmp_path: Path) -> None:
    """Random shards, 1 and 2 GPUs: equal batch counts, weights in sync after the graphed
    steps with the captured all-reduce, graph == eager DDP within 2% loss / 5% of the weight
    movement, and the same val metrics (fp32 scoring; 1e-6 on the gathered metrics)."""
    out = tmp_path / "multigpu.json"
    cmd = [sys.executable, "-m", "haloscope", "bench", "multigpu", "--gpus", "1,2",
           "--steps", "20", "--warmup", "5", "--workers", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    checks = doc["checks"]
    assert checks["equal_batch_counts"] and checks["weights_in_sync"]
    assert checks["graph_vs_eager_ddp_ok"] and checks["val_num_equal"]
    assert checks["infer_samples_equal"]
    assert checks["val_metrics_max_abs_diff"] < 1e-6
    assert set(doc["scaling"]["train_graph"]) == {"1", "2"}


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_graphed_training_exits_and_resumes(tmp_path: Path) -> None:
    """`torchrun haloscope train` on 2 GPUs (graphed step, captured all-reduce), then
    --resume: both exit 0 within the timeout (the first hung in destroy_process_group while
    the graph held the NCCL communicator) and the resumed run continues the step count."""
    write_random_shards(tmp_path / "shards" / "train", 8192, seed=0)
    write_random_shards(tmp_path / "shards" / "val", 2048, seed=1)
    run = tmp_path / "run"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "haloscope", "train", "--shards", str(tmp_path / "shards"), "--out-dir", str(run),
            "--batch-size", "512", "--num-workers", "1", "--no-progress",
            "--max-steps-per-epoch", "8", "--log-every", "4"]  # fmt: skip
    for extra in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "step: graph" in proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({r["global_step"] for r in rows if r.get("kind") == "train"})
    assert steps[-1] == 16
