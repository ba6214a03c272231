"""``haloscope bench gil``: what the trainer's helpers cost its loop's host side.

The training loop's host side is a stream of small calls (a graph replay, copies, the
scheduler, the window of step records); when they slow down the GPU runs out of queued work.
Helpers that run beside the loop in the same process share its GIL. Measured here, each for
``seconds`` seconds, the rate of a loop of small torch calls (the stand-in for the loop):

- ``alone``;
- ``curves_thread``: beside a thread redrawing ``curves.png`` in a loop (the trainer until
  the redraw moved out of the process);
- ``curves_process``: beside ``MetricsWriter``'s curves process redrawing in a loop (the
  trainer now: ``train.curves.serve``);
- ``checkpoint_thread``: beside a thread writing a ConvNeXt-Tiny + AdamW sized state (84M
  float32 values in 540 tensors) with the trainer's ``save_checkpoint`` in a loop (what the
  checkpoint writer thread does once per save).

Each is reported as a ratio to ``alone`` measured in the same run (the machines are noisy);
the metrics file redrawn is a 10-epoch run's size (6,100 step rows, 10 validations).
``redraws`` and ``saves`` count the helper's runs started while the loop was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from haloscope.atomic import atomic_write_text

__all__ = ["parse_options", "run_bench"]


def parse_options(argv: list[str]) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="haloscope bench gil",
        description="What the trainer's helpers cost its loop's host side: the rate of a loop "
        "of small torch calls alone, beside a curves.png redraw in a thread and in the curves "
        "process, and beside a checkpoint write in a thread (ratios to alone, one run).",
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    return vars(p.parse_args(argv))


def _loop_rate(seconds: float) -> float:
    """Iterations per second of ten small torch calls."""
    x = torch.randn(64, 64)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            x.add(1.0)
        n += 1
    return n / (time.perf_counter() - t0)


def _beside(work: Callable[[], None], seconds: float) -> tuple[float, int]:
    """The loop's rate while ``work`` runs over and over in a thread; (rate, works started)."""
    stop = threading.Event()
    done = [0]

    def helper() -> None:
        while not stop.is_set():
            done[0] += 1
            work()

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    time.sleep(0.2)
    try:
        return _loop_rate(seconds), done[0]
    finally:
        stop.set()
        thread.join()


def _metrics_file(run_dir: Path, steps: int = 6100, epochs: int = 10) -> None:
    rows = []
    per_epoch = steps // epochs
    for s in range(1, steps + 1):
        e = (s - 1) // per_epoch
        rows.append({"kind": "train", "epoch": e, "step": s - e * per_epoch, "global_step": s,
                     "train/loss": 0.05 + 0.02 / s ** 0.5, "train/lr": 1e-3 * min(1, s / 300),
                     "perf/data_wait_frac": 0.001})  # fmt: skip
        if s % per_epoch == 0:
            rows.append({"kind": "val", "epoch": e, "global_step": s, "val/auroc": 0.9 + e / 200,
                         "val/tpr@fpr1e-3": 0.2 + e / 40, "val/tpr@fpr1e-4": 0.1 + e / 40,
                         "val/loss": 0.04, "val/is_best": 1})  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_bench(out_path: str, seconds: float = 3.0) -> dict[str, Any]:
    from haloscope.train.checkpoint import save_checkpoint
    from haloscope.train.curves import write_curves
    from haloscope.train.metrics import MetricsWriter

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-gil-") as tmp:
        run_dir = Path(tmp)
        _metrics_file(run_dir)
        t0 = time.perf_counter()
        write_curves(run_dir)
        redraw_s = time.perf_counter() - t0
        alone = _loop_rate(seconds)
        thread_rate, thread_draws = _beside(lambda: write_curves(run_dir), seconds)
        writer = MetricsWriter(run_dir)

        def process_draw() -> None:
            writer.redraw_curves()
            writer.wait_curves()

        try:
            process_draw()  # the process starts and imports matplotlib first
            process_rate, process_draws = _beside(process_draw, seconds)
        finally:
            writer.close()
        state = {f"p{i}": torch.randn(84_000_000 // 540) for i in range(540)}
        ckpt = run_dir / "ckpt.pt"
        save_rate, saves = _beside(lambda: save_checkpoint(ckpt, {"model": state}), seconds)
    result = {
        "bench": "gil",
        "what": "rate of a loop of small torch calls beside each helper, / alone (same run)",
        "seconds": seconds,
        "one_redraw_s": round(redraw_s, 3),
        "alone_iter_per_s": round(alone, 1),
        "curves_thread": {"iter_per_s": round(thread_rate, 1),
                          "over_alone": round(thread_rate / alone, 3), "redraws": thread_draws},
        "curves_process": {"iter_per_s": round(process_rate, 1),
                           "over_alone": round(process_rate / alone, 3),
                           "redraws": process_draws},
        "checkpoint_thread": {"iter_per_s": round(save_rate, 1),
                              "over_alone": round(save_rate / alone, 3), "saves": saves},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpu_count": os.cpu_count()},
    }  # fmt: skip
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_path), json.dumps(result, indent=1) + "\n")
    return result
