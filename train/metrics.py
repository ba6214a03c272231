"""The run's metrics: a sink of flat dicts, the host side of the step records, a time budget.

``MetricsWriter``: only the main rank writes (``enabled=False`` on the others makes every
call a no-op). Train steps go to ``metrics.csv`` (fixed columns ``TRAIN_COLUMNS``),
validations to ``val_metrics.csv``, and both to ``metrics.jsonl`` with a ``kind`` field;
the run's time breakdown goes to ``metrics.jsonl`` as one ``kind: "run"`` record. Every
validation record also redraws ``curves.png`` from ``metrics.jsonl`` in a child process
(``train.curves``: about a second of matplotlib, which in this process would hold the GIL
and starve the training loop); ``wait_curves`` waits for it and re-raises its error.

``StepWindow`` holds what the host knows of the steps whose loss and gradient norm still
sit on the device (``train.step.StepMetrics``), and turns both into per-step records when
the loop reads them. ``TimeBreakdown`` splits a run's wall time from its first step to its
last checkpoint into step, loader wait, validation, checkpoint and other.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from haloscope.atomic import naming
from haloscope.errors import ConfigError
from haloscope.train.curves import CURVES_NAME

__all__ = ["TRAIN_COLUMNS", "VAL_COLUMNS", "PHASES", "MetricsWriter", "StepWindow", "TimeBreakdown"]

log = logging.getLogger(__name__)

TRAIN_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "global_step",
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "perf/img_per_s",
    "perf/step_s",
    "perf/data_wait_s",
    "perf/data_wait_frac",
    "time/wall_s",
)
VAL_COLUMNS: tuple[str, ...] = (
    "epoch",
    "global_step",
    "val/num",
    "val/num_pos",
    "val/num_neg",
    "val/loss",
    "val/auroc",
    "val/tpr@fpr1e-4",
    "val/tpr@fpr1e-3",
    "val/fpr@tpr0.9",
    "val/det_num_pos",
    "val/det_auroc",
    "val/det_tpr@fpr1e-4",
    "val/det_tpr@fpr1e-3",
    "val/is_best",
    "val/wall_s",
)


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

    FILES: tuple[str, ...] = ("metrics.jsonl", "metrics.csv", "val_metrics.csv")
    """The files it appends to in the run directory (all records, train steps, validations)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool = False,
        curves: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.curves = curves
        self._t0 = time.time()
        self._tb = None
        self._curves_proc: subprocess.Popen | None = None
        self._curves_pending = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        jsonl, train_csv, val_csv = self.FILES
        self._jsonl = open(self.run_dir / jsonl, "a", buffering=1)  # noqa: SIM115
        self._csv = {
            "train": self._open_csv(train_csv, TRAIN_COLUMNS),
            "val": self._open_csv(val_csv, VAL_COLUMNS),
        }
        if tensorboard:
            # NOTE: tensorboard is an optional extra: imported only for --tensorboard.
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

    def write(
        self,
        kind: str,
        record: dict[str, Any],
        *,
        to_tensorboard: bool = True,
        redraw: bool = True,
    ) -> None:
        """Append one record.

        Args:
            kind: ``train``, ``val`` or ``run`` (the latter only in metrics.jsonl).
            record: flat dict of numbers (must include ``global_step``).
            to_tensorboard: also send the numeric entries to TensorBoard (if enabled).
            redraw: a ``val`` record starts the redraw of ``curves.png``; False leaves it to
                a later ``redraw_curves`` (the trainer's: after its checkpoint snapshot,
                whose many small device copies the redraw's hold on the GIL slowed from
                ~15 ms to ~0.8 s on an H200 host).
        """
        if not self.enabled:
            return
        row = {"kind": kind, "time/wall_s": round(time.time() - self._t0, 3), **record}
        row = {k: _clean(v) for k, v in row.items()}
        with naming(self._jsonl.name):  # a full disk: name the file
            self._jsonl.write(json.dumps(row) + "\n")
        if kind not in self._csv:
            return
        handle, writer = self._csv[kind]
        with naming(handle.name):
            writer.writerow(row)
        if kind == "val" and redraw:
            self.redraw_curves()  # metrics.jsonl is line-buffered: the row is there
        if self._tb is not None and to_tensorboard:
            step = int(record.get("global_step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and "/" in key:
                    self._tb.add_scalar(key, value, step)

    def redraw_curves(self) -> None:
        """Start redrawing ``curves.png`` from ``metrics.jsonl`` in the run's curves process
        (when enabled with ``curves``; started at the first redraw); waits for the redraw in
        flight first."""
        if not (self.enabled and self.curves):
            return
        self.wait_curves()  # one redraw at a time
        proc = self._curves_proc
        if proc is None or proc.poll() is not None:
            proc = self._curves_proc = subprocess.Popen(
                [sys.executable, "-m", "haloscope.train.curves", "--serve", str(self.run_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # a Ctrl-C reaches the trainer, which closes it
            )
        assert proc.stdin is not None
        try:
            proc.stdin.write("draw\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died: wait_curves reports it
        self._curves_pending = True

    def wait_curves(self) -> None:
        """Wait for the redraw of ``curves.png`` in flight.

        Raises:
            OSError: the redraw could not write ``curves.png``, or its process ended (naming
                the file).
        """
        if not self._curves_pending:
            return
        self._curves_pending = False
        proc = self._curves_proc
        assert proc is not None and proc.stdout is not None
        answer = proc.stdout.readline().strip()
        if answer == "ok":
            return
        if not answer:  # end of its stdout: the process is gone
            self._stop_curves()
            answer = f"the curves process ended (exit code {proc.returncode})"
        raise OSError(f"could not redraw {self.run_dir / CURVES_NAME}: {answer}")

    def _stop_curves(self) -> None:
        """End the curves process (a ``quit`` line), killing it if it does not end."""
        proc, self._curves_proc = self._curves_proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        except OSError:  # BrokenPipeError among them: it is gone
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # BrokenPipeError among them: it is gone
                pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Wait for the curves, flush and close every file (a curves error is only logged)."""
        if not self.enabled:
            return
        try:
            self.wait_curves()
        except Exception as exc:  # noqa: BLE001 - closing after another error: log only
            log.warning("%s", exc)
        self._stop_curves()
        self._jsonl.close()
        for handle, _ in self._csv.values():
            handle.close()
        if self._tb is not None:
            self._tb.close()


class StepWindow:
    """The host's facts of the steps not yet read from the device, and their records.

    Args:
        batch_size: the global batch (images per step, all ranks).
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.last: dict[str, Any] | None = None  # the latest record (progress bar)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, *, epoch: int, step: int, global_step: int, lr: float, wait_s: float) -> None:
        """One dispatched step (``step``/``global_step`` counted after it, as in the records)."""
        self.rows.append(
            {
                "epoch": epoch,
                "step": step,
                "global_step": global_step,
                "train/lr": lr,
                "perf/data_wait_s": wait_s,
            }
        )

    def take(self) -> tuple[list[dict[str, Any]], float]:
        """The window's rows and host seconds so far; the next window starts empty, now."""
        now = time.perf_counter()
        rows, wall_s = self.rows, now - self.t0
        self.rows, self.t0 = [], now
        return rows, wall_s

    def records(
        self,
        values: Sequence[Sequence[float]],
        *,
        wall_s: float,
        rows: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Per-step records of the window (or of ``rows`` taken from it earlier).

        Without ``rows`` the next window starts here.

        Args:
            values: per step ``(loss, grad_norm)`` as read (and averaged over ranks).
            wall_s: host time of the window; the steps share it evenly (a step is not timed
                alone: that would need a device sync per step).
            rows: rows from ``take`` (a read that finished after later steps were queued).
        """
        if rows is None:
            rows, _ = self.take()
        step_s = wall_s / max(len(rows), 1)
        out = []
        for row, (loss, grad_norm) in zip(rows, values, strict=True):
            wait = row["perf/data_wait_s"]
            out.append(
                {
                    **row,
                    "train/loss": float(loss),
                    "train/grad_norm": float(grad_norm),
                    "perf/step_s": step_s,
                    "perf/img_per_s": self.batch_size / step_s,
                    "perf/data_wait_frac": min(1.0, wait / step_s),
                }
            )
        self.last = out[-1] if out else self.last
        return out


PHASES: tuple[str, ...] = ("step", "loader_wait", "validation", "checkpoint")
"""Where a run's time goes; ``other`` is the rest (metrics, logging, epoch transitions)."""


@contextmanager
def _booked(*places: tuple[dict[str, float], str]) -> Iterator[None]:
    """Add the wall time of the block to ``totals[key]`` for each ``(totals, key)``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - t
        for totals, key in places:
            totals[key] = totals.get(key, 0.0) + seconds


class TimeBreakdown:
    """Wall time of a run from its first step (``start``) to its last checkpoint (``summary``),
    and the setup before it.

    The setup (``setup_phase``, reported as ``time/setup_s`` and ``time/setup.<name>_s``,
    outside the total) is what the run does once before its first step: starting the
    loaders (forking their workers, which then read their first batches) and capturing the
    graphed train and eval steps meanwhile. ``step`` includes the reads of the device metrics
    (where the host waits for the GPU); ``loader_wait`` every wait for a batch, the first
    one included; ``checkpoint`` is the main thread's share (the state snapshot, waiting for
    the previous write, and at the end the last write); the background writes overlap the
    steps. A phase may also be booked under a detail name, reported as
    ``time/<phase>.<detail>_s`` beside (and included in) ``time/<phase>_s``.
    """

    def __init__(self) -> None:
        self.spent = dict.fromkeys(PHASES, 0.0)
        self.detail: dict[str, float] = {}
        self.setup: dict[str, float] = {}
        self.t0: float | None = None
        self.num_steps = 0

    def setup_phase(self, name: str) -> AbstractContextManager[None]:
        """Book the time of the block to the setup before the first step, as ``name``."""
        return _booked((self.setup, name))

    def start(self) -> None:
        """Start the clock (once; later calls do nothing)."""
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def add(self, phase: str, seconds: float) -> None:
        """Book ``seconds`` to ``phase``."""
        self.spent[phase] += seconds

    def phase(self, name: str, detail: str | None = None) -> AbstractContextManager[None]:
        """Book the time of the block to ``name`` (and to ``name.detail``)."""
        if detail is None:
            return _booked((self.spent, name))
        return _booked((self.spent, name), (self.detail, f"{name}.{detail}"))

    def summary(self, batch_size: int) -> dict[str, float]:
        """Flat ``time/*`` seconds and fractions and ``perf/img_per_s`` of the whole run."""
        total = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        out = {f"time/{k}_s": round(v, 4) for k, v in self.spent.items()}
        out["time/other_s"] = round(total - sum(self.spent.values()), 4)
        out["time/total_s"] = round(total, 4)
        for k in (*PHASES, "other"):
            out[f"time/{k}_frac"] = round(out[f"time/{k}_s"] / total, 5) if total > 0 else 0.0
        out.update({f"time/{k}_s": round(v, 4) for k, v in sorted(self.detail.items())})
        out["time/setup_s"] = round(sum(self.setup.values()), 4)
        out.update({f"time/setup.{k}_s": round(v, 4) for k, v in sorted(self.setup.items())})
        out["run/num_steps"] = self.num_steps
        out["run/num_samples"] = self.num_steps * batch_size
        out["perf/img_per_s"] = round(self.num_steps * batch_size / total, 2) if total else 0.0
        return out
