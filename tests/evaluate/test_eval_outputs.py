"""Where eval, mine and gen4 write: unreadable stamps, unwritable outputs, failed writes, and
the training curves of the run that produced the scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from haloscope.evaluate import cli as eval_cli
from haloscope.evaluate import mine_cli
from tests.output_faults import unwritable_out

HALOSCOPE = str(Path(sys.executable).with_name("haloscope"))
# a valid 1x1 PNG (red pixel): a stand-in for the trainer's curves.png
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HALOSCOPE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _not_info(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " INFO " not in line]


def _corrupt_chunks(path: Path, write_stamps, ids: list[str]) -> Path:
    # random values: chunks equal to the fill value (zeros) are not stored at all
    write_stamps(path, ids, np.random.default_rng(0).normal(size=(len(ids), 3, 64, 64)))
    for chunk in (path / "stamps" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"not a compressed chunk")
    return path


@pytest.mark.parametrize(
    "kind", ["regular file", "folder without zarr metadata", "garbage zarr.json", "corrupt chunks"]
)
def test_unreadable_stamps_warn_once_and_the_report_is_written(
    tmp_path, scores_table, write_stamps, kind
):
    pq.write_table(scores_table, tmp_path / "s.parquet")
    stamps = tmp_path / "stamps.zarr"
    if kind == "regular file":
        stamps.write_text("not a zarr store")
    elif kind == "folder without zarr metadata":
        stamps.mkdir()
        (stamps / "readme.txt").write_text("nothing here")
    elif kind == "garbage zarr.json":
        stamps.mkdir()
        (stamps / "zarr.json").write_text("{ this is not json")
    else:
        _corrupt_chunks(stamps, write_stamps, scores_table["task_id"].to_pylist())
    proc = _run("eval", "--scores", str(tmp_path / "s.parquet"), "--out-csv", str(tmp_path / "s.csv"),
                "--report-dir", str(tmp_path / "r"), "--stamps", str(stamps))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = _not_info(proc.stderr)
    assert len(lines) == 1 and " WARNING " in lines[0] and str(stamps) in lines[0], proc.stderr
    assert "without galleries" in lines[0]
    md = (tmp_path / "r/report.md").read_text()
    assert "No galleries: the --stamps store could not be read" in md
    assert (tmp_path / "r/report.html").is_file() and not list((tmp_path / "r").rglob("gallery*"))
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["report"]["shortcut_audit"]["status"] == "skipped"


@pytest.mark.parametrize(
    "verb, flag, target",
    [
        ("eval", "--out-csv", "strat.csv"),
        ("eval", "--out-json", "strat.json"),
        ("eval", "--report-dir", "report"),
        ("mine", "--out", "lookup.parquet"),
        ("gen4", "--out", "experiment"),
    ],
)
def test_unwritable_output_is_one_line_and_writes_nothing(
    tmp_path, make_scores, verb, flag, target
):
    scores = tmp_path / "in" / "scores.parquet"
    scores.parent.mkdir()
    pq.write_table(make_scores(300, split="train"), scores)
    blocked = unwritable_out(tmp_path)  # read-only folder; as root, under a regular file
    out = tmp_path / "out"
    args = {
        "eval": ["--scores", str(scores), "--out-csv", str(out / "strat.csv"),
                 "--report-dir", str(out / "report")],
        "mine": ["--scores", str(scores), "--min-score", "0.5"],
        "gen4": ["--tiny"],
    }[verb]  # fmt: skip
    before = _files(tmp_path)
    proc = _run(verb, *args, flag, str(blocked / target))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"haloscope {verb}: error: {blocked}")
    assert ("Not a directory" if os.geteuid() == 0 else "Permission denied") in lines[0]
    assert _files(tmp_path) == before  # not even the outputs that could have been written


def _fail_renames(monkeypatch) -> None:
    def replace(src, dst, **kwargs):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("verb", ["eval", "mine"])
def test_a_failed_write_leaves_no_file_behind(tmp_path, monkeypatch, make_scores, verb):
    """Disk full at the last step of every write: the error propagates, no temp file stays."""
    (tmp_path / "in").mkdir()
    scores = tmp_path / "in" / "scores.parquet"
    pq.write_table(make_scores(300, split="train"), scores)
    out = tmp_path / "out"
    out.mkdir()
    (out / "strat.csv").write_text("previous result\n")
    _fail_renames(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        if verb == "eval":
            eval_cli.main(["--scores", str(scores), "--out-csv", str(out / "strat.csv"),
                           "--report-dir", str(out / "report")])  # fmt: skip
        else:
            mine_cli.main(["--scores", str(scores), "--out", str(out / "lookup.parquet"),
                           "--min-score", "0.5"])  # fmt: skip
    assert _files(out) == {"strat.csv"}
    assert (out / "strat.csv").read_text() == "previous result\n"


def _scores_from_run(tmp_path: Path, table, checkpoint: str) -> Path:
    meta = {**(table.schema.metadata or {}), b"checkpoint": checkpoint.encode()}
    path = tmp_path / "scores_test.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


@pytest.mark.parametrize("recorded", ["absolute", "relative"])
def test_report_shows_the_training_curves_of_the_run(tmp_path, scores_table, recorded):
    run = tmp_path / "runs" / "gen4"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"a checkpoint")
    (run / "curves.png").write_bytes(TINY_PNG)
    checkpoint = str(run / "best.pt") if recorded == "absolute" else "runs/gen4/best.pt"
    scores = _scores_from_run(tmp_path, scores_table, checkpoint)
    proc = _run("eval", "--scores", str(scores), "--out-csv", str(tmp_path / "e/strat.csv"),
                "--report-dir", str(tmp_path / "e/report"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "e" / "report"
    assert (report / "curves.png").read_bytes() == TINY_PNG
    assert '<img src="curves.png"' in (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    assert "![training curves" in md and "(curves.png)" in md and "runs/gen4" in md
    doc = json.loads((tmp_path / "e/strat.json").read_text())
    assert Path(doc["report"]["training_curves"]).resolve() == (run / "curves.png").resolve()


def test_report_says_when_the_run_has_no_curves(tmp_path, scores_table):
    (tmp_path / "run").mkdir()
    scores = _scores_from_run(tmp_path, scores_table, str(tmp_path / "run" / "best.pt"))
    proc = _run("eval", "--scores", str(scores), "--out-csv", str(tmp_path / "strat.csv"),
                "--report-dir", str(tmp_path / "report"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "report/report.md").read_text()
    expected = f"No training curves: no `curves.png` next to the checkpoint `{tmp_path / 'run'}"
    assert expected in md
    assert not (tmp_path / "report/curves.png").exists()
