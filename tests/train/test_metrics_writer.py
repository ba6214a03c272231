"""MetricsWriter: JSONL + CSV on the main rank only; TensorBoard optional with a clear error."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from haloscope.errors import ConfigError
from haloscope.train.metrics import MetricsWriter


def test_jsonl_and_csv_and_append_on_resume(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path)
    w.write("train", {"epoch": 0, "step": 1, "global_step": 1, "train/loss": 0.5, "train/lr": 1e-4})
    w.write("val", {"epoch": 0, "global_step": 1, "val/auroc": float("nan")})
    w.close()
    w = MetricsWriter(tmp_path)  # a resumed run appends, one header only
    w.write("train", {"epoch": 0, "step": 2, "global_step": 2, "train/loss": 0.25})
    w.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["train", "val", "train"]
    assert rows[1]["val/auroc"] is None  # NaN -> null, valid JSON
    table = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [float(r["train/loss"]) for r in table] == [0.5, 0.25]
    assert len(list(csv.DictReader((tmp_path / "val_metrics.csv").open()))) == 1


def test_disabled_writer_writes_nothing(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path / "x", enabled=False)
    w.write("train", {"global_step": 1})
    w.close()
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="tensorboard installed"
)
def test_tensorboard_missing_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--tensorboard needs the tensorboard package"):
        MetricsWriter(tmp_path, tensorboard=True)


def _train_and_val_rows(w: MetricsWriter) -> None:
    for step in (1, 2):
        w.write("train", {"epoch": 0, "step": step, "global_step": step, "train/loss": 0.5})
    w.write("val", {"epoch": 0, "global_step": 2, "val/auroc": 0.9, "val/is_best": 1})


def test_the_redraw_runs_in_another_process(tmp_path: Path, monkeypatch) -> None:
    """matplotlib in the trainer's process would hold its GIL and starve the loop
    (bench/gil.py): the drawing must happen in the curves process, not here."""
    import haloscope.train.curves as curves

    def here(*_a, **_k):
        raise AssertionError("curves drawn in the training process")

    monkeypatch.setattr(curves, "write_curves", here)
    w = MetricsWriter(tmp_path)
    _train_and_val_rows(w)
    w.wait_curves()
    assert (tmp_path / "curves.png").stat().st_size > 0
    proc = w._curves_proc
    assert proc is not None and proc.pid != os.getpid() and proc.poll() is None
    w.close()
    assert proc.returncode == 0  # close() ended it (a quit line), no kill


def test_a_curves_process_that_dies_is_one_error_and_then_replaced(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path)
    _train_and_val_rows(w)
    w.wait_curves()
    first = w._curves_proc
    assert first is not None
    first.send_signal(signal.SIGKILL)  # dead between redraws: the next redraw starts another
    first.wait()
    w.redraw_curves()
    w.wait_curves()
    second = w._curves_proc
    assert second is not None and second.pid != first.pid
    w.redraw_curves()
    second.send_signal(signal.SIGKILL)  # dead while drawing (a redraw takes >= 0.3 s)
    with pytest.raises(OSError, match=r"curves\.png: the curves process ended \(exit code -9\)"):
        w.wait_curves()
    (tmp_path / "curves.png").unlink()
    w.redraw_curves()
    w.wait_curves()
    assert w._curves_proc is not None and w._curves_proc.pid not in (first.pid, second.pid)
    assert (tmp_path / "curves.png").stat().st_size > 0
    w.close()


def test_curves_module_usage_is_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "haloscope.train.curves"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "usage: python -m haloscope.train.curves --serve RUN_DIR"


def test_curves_are_redrawn_in_the_background_and_errors_surface(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path)
    for step in (1, 2):
        w.write("train", {"epoch": 0, "step": step, "global_step": step, "train/loss": 0.5})
    w.write("val", {"epoch": 0, "global_step": 2, "val/auroc": 0.9, "val/is_best": 1})
    w.wait_curves()
    assert (tmp_path / "curves.png").stat().st_size > 0
    (tmp_path / "curves.png").unlink()
    (tmp_path / "curves.png").mkdir()  # the redraw cannot replace a folder
    w.write("val", {"epoch": 1, "global_step": 2, "val/auroc": 0.9, "val/is_best": 0})
    with pytest.raises(OSError, match="curves.png"):
        w.wait_curves()
    w.wait_curves()  # raised once
    w.close()


def test_a_val_record_may_leave_the_redraw_for_later(tmp_path: Path) -> None:
    """The trainer writes the val row before its checkpoint snapshot and starts the redraw
    after it (matplotlib's hold on the GIL would slow the snapshot's many small copies)."""
    w = MetricsWriter(tmp_path)
    w.write("train", {"epoch": 0, "step": 1, "global_step": 1, "train/loss": 0.5})
    w.write("val", {"epoch": 0, "global_step": 1, "val/auroc": 0.9, "val/is_best": 1}, redraw=False)
    w.wait_curves()
    assert not (tmp_path / "curves.png").exists()  # no redraw was started
    w.redraw_curves()
    w.wait_curves()
    assert (tmp_path / "curves.png").stat().st_size > 0
    w.close()
    off = MetricsWriter(tmp_path / "off", curves=False)
    off.write("val", {"epoch": 0, "global_step": 1, "val/auroc": 0.9, "val/is_best": 1})
    off.redraw_curves()
    off.wait_curves()
    assert not (tmp_path / "off" / "curves.png").exists()
    off.close()
