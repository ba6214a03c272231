"""``haloscope bench gpu --whole-run`` in its tiny CPU form: the JSON's fields exist and agree.

The real numbers come from a GPU (docs/gpu.md); here a convnext_atto step runs for a second
on the CPU, then a 2-epoch `haloscope train` run on the tiny shards, through the same
``haloscope bench`` dispatcher a user calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloscope.bench import main as bench_main
from haloscope.errors import ConfigError

PHASES = ("step", "loader_wait", "validation", "checkpoint", "other")


def test_whole_run_json_is_consistent(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "whole_run.json"
    train_args = "--epochs 2 --max-steps-per-epoch 3 --num-workers 0 --val-batch-size 32"
    argv = ["gpu", "--out", str(out), "--whole-run", "--shards", str(tiny_shards), "--device",
            "cpu", "--arch", "convnext_atto", "--batch-size", "16", "--seconds", "1",
            "--train-args", train_args, "--work-dir", str(tmp_path)]  # fmt: skip
    assert bench_main(argv) == 0
    doc = json.loads(out.read_text())
    synth, run = doc["synthetic"], doc["whole_run"]
    assert synth["mode"] == "eager" and synth["steps"] >= 1 and synth["img_per_s"] > 0
    assert synth["img_per_s"] == pytest.approx(16 * synth["steps"] / synth["seconds"], rel=1e-3)
    assert run["run/num_steps"] == 6 and run["run/num_samples"] == 96
    assert run["reason"] == "completed" and run["step_mode"] == "eager"
    total = run["time/total_s"]
    assert run["perf/img_per_s"] == pytest.approx(96 / total, rel=1e-3)
    assert sum(run[f"time/{k}_s"] for k in PHASES) == pytest.approx(total, abs=1e-3)
    assert all(0 <= run[f"time/{k}_frac"] <= 1 for k in PHASES)
    assert run["time/validation_s"] > 0 and run["time/checkpoint_s"] > 0
    ratio = run["perf/img_per_s"] / synth["img_per_s"]
    assert doc["whole_run_over_synthetic"] == pytest.approx(ratio, abs=1e-4)
    setup = run["time/setup_s"]  # loader start and captures, before the first step
    parts = ("loader_start", "capture", "eval_capture")
    assert setup > 0 and setup == pytest.approx(
        sum(run[f"time/setup.{k}_s"] for k in parts), abs=1e-3
    )
    with_setup = 96 / (total + setup) / synth["img_per_s"]
    assert doc["whole_run_with_setup_over_synthetic"] == pytest.approx(with_setup, abs=1e-4)
    assert doc["whole_run_with_setup_over_synthetic"] <= doc["whole_run_over_synthetic"]  # rounded
    assert doc["settings"]["train_args"] == train_args
    kept = tmp_path / "whole_run"  # --work-dir keeps the run (a recipe scores its best.pt)
    assert run["run_dir"] == str(kept) and (kept / "best.pt").is_file()
    assert json.loads((kept / "time_breakdown.json").read_text())["time/total_s"] == total


def test_whole_run_refuses_to_overwrite_gpu_json(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="whole_run.json"):
        bench_main(["gpu", "--out", str(tmp_path / "gpu.json"), "--whole-run", "--shards",
                    str(tiny_shards), "--device", "cpu"])  # fmt: skip
    with pytest.raises(ConfigError, match="--shards"):
        bench_main(["gpu", "--out", str(tmp_path / "w.json"), "--whole-run", "--device", "cpu"])
