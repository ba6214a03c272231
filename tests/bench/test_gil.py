"""``haloscope bench gil``: every helper is measured beside the loop and written to the JSON.

Only the structure is checked: the rates themselves are for the benchmark to report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_gil_bench_writes_each_helper_with_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "gil.json"
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "bench", "gil", "--out", str(out), "--seconds", "0.3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["alone_iter_per_s"] > 0 and doc["one_redraw_s"] > 0
    for helper, count in (("curves_thread", "redraws"), ("curves_process", "redraws"),
                          ("checkpoint_thread", "saves")):  # fmt: skip
        row = doc[helper]
        assert row[count] >= 1  # the helper really ran while the loop was measured
        assert row["over_alone"] == round(row["iter_per_s"] / doc["alone_iter_per_s"], 3)
    assert not list(tmp_path.glob("bench-gil-*"))  # its temporary run folder is gone
