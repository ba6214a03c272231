"""The run's metrics sink: flat dicts to metrics.jsonl, CSV tables and optional TensorBoard.

Only the main rank writes (``enabled=False`` on the others makes every call a no-op).
Train steps go to ``metrics.csv`` (fixed columns ``TRAIN_COLUMNS``), validations to
``val_metrics.csv``, and both to ``metrics.jsonl`` with a ``kind`` field. Every validation
record also redraws ``curves.png`` from ``metrics.jsonl`` (``train.curves``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from haloscope.atomic import naming
from haloscope.errors import ConfigError
from haloscope.train.curves import write_curves

__all__ = ["TRAIN_COLUMNS", "VAL_COLUMNS", "MetricsWriter"]

log = logging.getLogger(__name__)

TRAIN_COLUMNS: tuple[str, ...] = (
    "epoch", "step", "global_step", "train/loss", "train/lr", "train/grad_norm",
    "perf/img_per_s", "perf/step_s", "perf/data_wait_s", "perf/data_wait_frac", "time/wall_s",
)  # fmt: skip
VAL_COLUMNS: tuple[str, ...] = (
    "epoch", "global_step", "val/num", "val/num_pos", "val/num_neg", "val/loss", "val/auroc",
    "val/tpr@fpr1e-4", "val/tpr@fpr1e-3", "val/fpr@tpr0.9", "val/is_best", "val/wall_s",
)  # fmt: skip


def _clean(value: Any) -> Any:
    """JSON-safe scalar: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Append-only metrics sink of one run directory.

    Args:
        run_dir: the run directory.
        enabled: False on non-main ranks (then nothing is written).
        tensorboard: also write TensorBoard events to ``run_dir/tb``.
        curves: redraw ``run_dir/curves.png`` after every validation record.

    Raises:
        ConfigError: ``tensorboard=True`` but the package is not installed.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False,
                 curves: bool = True):  # fmt: skip
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.curves = curves
        self._t0 = time.time()
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self._csv = {
            "train": self._open_csv("metrics.csv", TRAIN_COLUMNS),
            "val": self._open_csv("val_metrics.csv", VAL_COLUMNS),
        }
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--tensorboard needs the tensorboard package: "
                    "pip install 'haloscope[tensorboard]' (or drop --tensorboard)"
                ) from None
            with naming(self.run_dir / "tb"):
                self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def _open_csv(self, name: str, columns: tuple[str, ...]) -> tuple[Any, csv.DictWriter]:
        path = self.run_dir / name
        is_new = not path.exists() or path.stat().st_size == 0
        handle = open(path, "a", newline="", buffering=1)  # noqa: SIM115
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        if is_new:
            writer.writeheader()
        return handle, writer

    def write(self, kind: str, record: dict[str, Any], *, to_tensorboard: bool = True) -> None:
        """Append one record.

        Args:
            kind: ``train`` or ``val``.
            record: flat dict of numbers (must include ``global_step``).
            to_tensorboard: also send the numeric entries to TensorBoard (if enabled).
        """
        if not self.enabled:
            return
        row = {"kind": kind, "time/wall_s": round(time.time() - self._t0, 3), **record}
        row = {k: _clean(v) for k, v in row.items()}
        with naming(self._jsonl.name):  # a full disk: name the file
            self._jsonl.write(json.dumps(row) + "\n")
        handle, writer = self._csv[kind]
        with naming(handle.name):
            writer.writerow(row)
        if kind == "val" and self.curves:
            write_curves(self.run_dir)  # metrics.jsonl is line-buffered: the row is there
        if self._tb is not None and to_tensorboard:
            step = int(record.get("global_step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and "/" in key:
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close every file."""
        if not self.enabled:
            return
        self._jsonl.close()
        for handle, _ in self._csv.values():
            handle.close()
        if self._tb is not None:
            self._tb.close()
