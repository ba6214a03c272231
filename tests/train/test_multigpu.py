"""``haloscope bench multigpu``: option checks on CPU; the 2-GPU run under ``-m gpu``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haloscope.errors import ConfigError
from haloscope.train.bench_multigpu import _efficiency, parse_options
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
