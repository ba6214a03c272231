"""Markdown tables of the arms of ``bench/recipe_gpu.sh`` (issue 17's ablations).

Usage: ``python bench/recipe_table.py RESULTS_DIR [--target 0.25]`` reads, for every arm
folder: ``stratified_fpr.json`` (``haloscope eval``), ``metrics.jsonl`` (the run's val rows)
and ``time_breakdown.json`` (the trainer's timing), and prints one row per arm: the test
TPR at FPR 1e-4 / 1e-3 with 95% intervals on the detectable subset and on all injections,
AUROC, the run's wall time, and the time to reach a validation target (val tpr@fpr1e-3 over
all val injections, read at each validation).

``--time-to-quality [--targets 0.75,0.8,0.83] [--key val/det_tpr@fpr1e-3]`` needs only the
val rows: per arm (every folder with a ``metrics.jsonl``), the run's seconds from its start
to the first validation at or above each target (the validation's own time included), the
best value and its epoch, and the run's time and img/s.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


def _tpr(block: dict, target: float) -> tuple[float, float, float]:
    """(TPR, low, high) at an FPR target: the detectable block has intervals, the global
    block counts (``num_tp`` of ``num_pos``), from which the Wilson interval is computed."""
    row = next(r for r in block["tpr@fpr"] if abs(r["target"] - target) < 1e-12)
    if "value" in row:
        return row["value"], row["ci_low"], row["ci_high"]
    return (row["tpr"], *_wilson(row["num_tp"], row["num_pos"]))


def _fmt(v: tuple[float, float, float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _val_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "val"]


def _time_to(vals: list[dict], key: str, target: float) -> float | None:
    return next((r["time/wall_s"] for r in vals if r.get(key, 0.0) >= target), None)


def _timing(arm: Path) -> dict:
    """The run's ``time_breakdown.json`` ({} when it has none)."""
    path = arm / "time_breakdown.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_s(timing: dict, vals: list[dict]) -> float | None:
    """The run's seconds: its timed total, else its last validation's time, else None."""
    if "time/total_s" in timing:
        return timing["time/total_s"]
    return vals[-1]["time/wall_s"] if vals else None


def arm_row(arm: Path, target: float) -> dict | None:
    """One arm's figures, or None when its eval has not run."""
    ev = arm / "stratified_fpr.json"
    if not ev.is_file():
        return None
    doc = json.loads(ev.read_text())
    det, allp = doc["detectable"], doc["global"]
    vals = _val_rows(arm / "metrics.jsonl")
    return {
        "arm": arm.name,
        "det_1e4": _tpr(det, 1e-4),
        "det_1e3": _tpr(det, 1e-3),
        "all_1e4": _tpr(allp, 1e-4),
        "all_1e3": _tpr(allp, 1e-3),
        "auroc": doc["auroc"],
        "lenses": det["P"],
        "controls": det["N"],
        "det_lenses": det["num_lenses"],
        "best_val": max((r.get("val/tpr@fpr1e-3", 0.0) for r in vals), default=None),
        "wall_s": _run_s(_timing(arm), vals),
        "to_target_s": _time_to(vals, "val/tpr@fpr1e-3", target),
    }


def ttq_row(arm: Path, key: str, targets: list[float]) -> dict | None:
    """One arm's time-to-quality figures from its val rows, or None without any."""
    vals = _val_rows(arm / "metrics.jsonl")
    if not vals:
        return None
    best = max(vals, key=lambda r: r.get(key, float("-inf")))
    t = _timing(arm)
    return {
        "arm": arm.name,
        "to": [_time_to(vals, key, x) for x in targets],
        "best": best.get(key),
        "best_epoch": best.get("epoch"),
        "validations": len(vals),
        "batch": t.get("global_batch_size"),
        "run_s": _run_s(t, vals),
        "img_s": t.get("perf/img_per_s"),
    }


def time_to_quality(results: Path, key: str, targets: list[float]) -> int:
    rows = [r for d in sorted(results.iterdir()) if d.is_dir() and (r := ttq_row(d, key, targets))]
    if not rows:
        print(f"no arm with val rows in metrics.jsonl under {results}", file=sys.stderr)
        return 1
    print(f"Seconds from the run's start to the first validation with {key} >= target.\n")
    heads = [f"s to {x:g}" for x in targets]
    print(
        "| arm | batch | " + " | ".join(heads) + " | best (epoch) | validations | run s | img/s |"
    )
    print("|---|---|" + "---|" * len(heads) + "---|---|---|---|")
    for r in rows:
        cells = [r["arm"], str(r["batch"] or "-")]
        cells += [f"{s:.0f}" if s is not None else "not reached" for s in r["to"]]
        cells += [f"{r['best']:.3f} ({r['best_epoch']})", str(r["validations"]),
                  f"{r['run_s']:.0f}", f"{r['img_s']:.0f}" if r["img_s"] else "-"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--target", type=float, default=0.25, help="val tpr@fpr1e-3 target")
    p.add_argument("--time-to-quality", action="store_true",
                   help="only the time-to-quality table, from the val rows")  # fmt: skip
    p.add_argument("--targets", default="0.75,0.8,0.83", help="with --time-to-quality")
    p.add_argument("--key", default="val/det_tpr@fpr1e-3", help="with --time-to-quality")
    a = p.parse_args(argv)
    if a.time_to_quality:
        return time_to_quality(a.results, a.key, [float(x) for x in a.targets.split(",")])
    rows = [r for d in sorted(a.results.iterdir()) if d.is_dir() and (r := arm_row(d, a.target))]
    if not rows:
        print(f"no arm with stratified_fpr.json under {a.results}", file=sys.stderr)
        return 1
    r0 = rows[0]
    print(
        f"Test: {r0['controls']:,} controls; detectable subset {r0['det_lenses']:,} lenses. "
        f"95% Wilson intervals; thresholds from all controls.\n"
    )
    print(
        "| arm | detectable TPR@1e-4 | detectable TPR@1e-3 | all TPR@1e-4 | all TPR@1e-3 "
        f"| AUROC | best val tpr@1e-3 | run s | s to val {a.target} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            r["arm"],
            _fmt(r["det_1e4"]),
            _fmt(r["det_1e3"]),
            _fmt(r["all_1e4"]),
            _fmt(r["all_1e3"]),
            f"{r['auroc']:.4f}",
            f"{r['best_val']:.3f}" if r["best_val"] is not None else "-",
            f"{r['wall_s']:.0f}" if r["wall_s"] else "-",
            f"{r['to_target_s']:.0f}" if r["to_target_s"] else "not reached",
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
