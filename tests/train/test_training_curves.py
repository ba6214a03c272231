"""RUN/curves.png: redrawn from metrics.jsonl at every validation, a valid PNG, written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib import pyplot as plt

from haloscope.train import loop
from haloscope.train.cli import main
from haloscope.train.curves import _plot_val, write_curves
from tests.train.train_fixtures import tiny_argv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(data: bytes) -> None:
    assert data.startswith(PNG_MAGIC)
    height, width, _ = matplotlib.image.imread(io.BytesIO(data), format="png").shape
    assert width >= 600 and height >= 400


def test_curves_png_is_redrawn_at_every_validation(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    seen: list[bytes | None] = []  # curves.png as each validation starts
    real = loop.validate

    def spy(*args, **kwargs):
        path = run / "curves.png"
        seen.append(path.read_bytes() if path.exists() else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", spy)
    assert main(tiny_argv(tiny_shards, run, "--epochs", "3", "--max-steps-per-epoch", "3")) == 0
    final = (run / "curves.png").read_bytes()
    assert seen[0] is None and len(seen) == 3  # none before the first validation
    after_each = [*seen[1:], final]  # the picture after validations 1, 2 and 3
    for data in after_each:
        _assert_png(data)
    assert len(set(after_each)) == 3  # redrawn each time
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_failed_redraw_is_a_warning_and_training_goes_on(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The curves are a convenience: a redraw that fails (its process killed, a full disk)
    must not end a long run; the checkpoints are what matter, and they are written."""
    from haloscope.train.metrics import MetricsWriter

    calls: list[int] = []

    def failing(self) -> None:
        if self._curves_pending:
            calls.append(1)
            self._curves_pending = False
            raise OSError(
                f"could not redraw {self.run_dir / 'curves.png'}: the curves process ended"
            )

    monkeypatch.setattr(MetricsWriter, "wait_curves", failing)
    run = tmp_path / "run"
    assert main(tiny_argv(tiny_shards, run, "--epochs", "2", "--max-steps-per-epoch", "2")) == 0
    assert len(calls) == 2  # both validations' redraws failed
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    err = capfd.readouterr().err
    warned = [line for line in err.splitlines() if "could not redraw" in line]
    assert len(warned) == 2 and all(line.endswith("; training goes on") for line in warned)


def test_curves_survive_a_resumed_log_and_missing_values(tmp_path: Path) -> None:
    """A resumed run repeats steps in metrics.jsonl; NaN metrics are logged as null."""
    rows = [
        {
            "kind": "train",
            "epoch": 0,
            "step": s,
            "global_step": s,
            "train/loss": 1.0 / s,
            "train/lr": 1e-4 * s,
            "perf/data_wait_frac": 0.1,
        }
        for s in (1, 2, 3, 2, 3, 4)
    ]
    rows.append(
        {
            "kind": "val",
            "epoch": 0,
            "global_step": 4,
            "val/loss": 0.3,
            "val/auroc": None,
            "val/tpr@fpr1e-4": 0.0,
            "val/is_best": 1,
        }
    )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    _assert_png(path.read_bytes())


def test_validation_panel_draws_the_detectable_subset_when_validation_has_it() -> None:
    base = {"val/auroc": 0.9, "val/tpr@fpr1e-3": 0.3, "val/tpr@fpr1e-4": 0.1, "val/is_best": 1}
    with_det = [{**base, "epoch": e, "val/det_tpr@fpr1e-3": 0.5 + e / 10} for e in range(3)]
    labels = {}
    for name, rows in (("det", with_det), ("plain", [{**base, "epoch": e} for e in range(3)])):
        fig, ax = plt.subplots()
        _plot_val(ax, rows)
        labels[name] = [line.get_label() for line in ax.get_lines()]
        if name == "det":
            det = ax.get_lines()[labels[name].index("detectable TPR @ FPR 1e-3")]
            assert list(det.get_ydata()) == [0.5, 0.6, 0.7]
        plt.close(fig)
    assert "detectable TPR @ FPR 1e-4" not in labels["det"]  # no values: not drawn
    assert not any(label.startswith("detectable") for label in labels["plain"])
