"""`haloscope eval` end to end in a subprocess: outputs, report with PNGs, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

HALOSCOPE = str(Path(sys.executable).with_name("haloscope"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HALOSCOPE, "eval", *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0]


def test_eval_writes_csv_json_and_report(tmp_path, scores_table):
    pq.write_table(scores_table, tmp_path / "scores.parquet")
    group = zarr.open_group(str(tmp_path / "stamps.zarr"), mode="w")
    group.create_array(
        "stamps",
        data=np.zeros((scores_table.num_rows, 3, 64, 64), np.float16),
        chunks=(64, 3, 64, 64),
    )
    ids = group.create_array("task_id", shape=(scores_table.num_rows,), dtype=str)
    ids[:] = np.asarray(scores_table["task_id"].to_pylist())
    proc = _run("--scores", str(tmp_path / "scores.parquet"), "--out_csv", str(tmp_path / "out/strat.csv"),
                "--report-dir", str(tmp_path / "report"), "--stamps", str(tmp_path / "stamps.zarr"),
                "--ci", "clopper-pearson")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("eval: detectable (arc_snr>=5,theta_over_psf>=0.8: ")
    assert proc.stdout.index("TPR@FPR0.0001=") < proc.stdout.index("| all injections: AUROC=")
    rows = list(csv.DictReader((tmp_path / "out/strat.csv").open()))
    assert [r["stratum"] for r in rows[:2]] == ["detectable", "ALL"]
    assert int(rows[1]["P"]) == int(np.asarray(scores_table["label"]).sum())
    doc = json.loads((tmp_path / "out/strat.json").read_text())
    assert doc["ci_method"] == "clopper-pearson" and doc["rank_by"] == "logit"
    det = doc["detectable"]
    assert det["status"] == "ok" and det["num_lenses"] == int(rows[0]["P"])
    assert det["theta_over_psf"].startswith("theta_e_arcsec / psfsize_r")
    assert set(doc["completeness_curves"]["curves"]) == {
        "arc_snr_sum",
        "theta_over_psf",
        "arc_lens_flux_ratio",
    }
    assert doc["report"]["shortcut_audit"]["status"] == "ok"
    report = tmp_path / "report"
    pngs = {
        "roc.png",
        "score_hist.png",
        "completeness_theta_over_psf.png",
        "completeness_arc_snr.png",
        "gallery/top_controls_00.png",
        "gallery/missed_lenses_11.png",
        "completeness_curve_arc_snr_sum.png",
        "completeness_curve_theta_over_psf.png",
        "completeness_curve_arc_lens_flux_ratio.png",
    }
    assert pngs <= {str(p.relative_to(report)) for p in report.rglob("*.png")}
    assert all((report / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    md = (report / "report.md").read_text()
    for needle in (
        "AUROC",
        "TPR@FPR0.0001",
        "TPR@FPR0.001",
        "FPR@TPR0.90",
        "strat.csv",
        "roc.png",
        "Shortcut audit",
    ):
        assert needle in md
    assert md.index("Headline: detectable lenses") < md.index("All injections: key numbers")
    headline = md[md.index("Headline: detectable lenses") : md.index("All injections: key numbers")]
    assert f"AUROC against all controls: {det['auroc']:.5f}" in headline
    assert '<img src="roc.png"' in (report / "report.html").read_text()


def test_eval_without_subset_columns_reports_all_injections(tmp_path, scores_table):
    pq.write_table(scores_table.drop_columns(["arc_snr"]), tmp_path / "s.parquet")
    proc = _run("--scores", str(tmp_path / "s.parquet"), "--out-csv", str(tmp_path / "s.csv"))
    assert proc.returncode == 0, proc.stderr
    expected = "eval: detectable subset not evaluated (column 'arc_snr' absent) | all injections:"
    assert proc.stdout.startswith(expected)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["detectable"]["reason"] == "column 'arc_snr' absent"
    assert next(csv.DictReader((tmp_path / "s.csv").open()))["stratum"] == "ALL"


def test_bad_detectable_spec_is_one_clear_line(tmp_path):
    proc = _run("--scores", str(tmp_path / "s.parquet"), "--out-csv", str(tmp_path / "s.csv"),
                "--detectable", "arc_snr=5")  # fmt: skip
    _assert_one_line_error(proc, "--detectable: cannot read 'arc_snr=5'")
    assert not (tmp_path / "s.csv").exists()


def test_eval_without_stamps_says_so(tmp_path, scores_table):
    pq.write_table(scores_table, tmp_path / "s.parquet")
    proc = _run("--scores", str(tmp_path / "s.parquet"), "--out-csv", str(tmp_path / "s.csv"),
                "--report-dir", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "r/report.md").read_text()
    assert "No galleries: no --stamps store was given" in md and "Skipped: no --stamps" in md


def test_missing_file_is_one_clear_line(tmp_path):
    proc = _run("--scores", str(tmp_path / "nope.parquet"), "--out-csv", str(tmp_path / "x.csv"))
    _assert_one_line_error(proc, "scores file not found", "nope.parquet")


@pytest.mark.parametrize(
    "mutate, needles",
    [
        (lambda t: t.drop_columns(["score"]), ("missing column(s) 'score'",)),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("logit"),
                "logit",
                pa.array([float("nan")] + [0.0] * (t.num_rows - 1), pa.float32()),
            ),
            ("column 'logit'", "NaN"),
        ),
        (lambda t: t.filter(pa.array(np.asarray(t["label"]) == 0)), ("no positives",)),
        (lambda t: t.filter(pa.array(np.asarray(t["label"]) == 1)), ("no controls",)),
    ],
)
def test_bad_tables_are_one_clear_line(tmp_path, scores_table, mutate, needles):
    path = tmp_path / "bad.parquet"
    pq.write_table(mutate(scores_table), path)
    proc = _run("--scores", str(path), "--out-csv", str(tmp_path / "x.csv"))
    _assert_one_line_error(proc, "bad.parquet", *needles)


def test_help_lists_flags_and_defaults():
    proc = _run("--help")
    assert proc.returncode == 0
    for needle in (
        "--scores",
        "--out-csv",
        "--report-dir",
        "--stamps",
        "--ci",
        "--compare",
        "(default: wilson)",
        "(default: auto)",
    ):
        assert needle in " ".join(proc.stdout.split())  # help lines are wrapped


def test_eval_compare_writes_side_by_side_table(tmp_path, scores_table):
    labels = np.asarray(scores_table["label"])
    better = np.asarray(scores_table["logit"]) + 3.0 * labels
    gen4 = scores_table.set_column(
        scores_table.schema.get_field_index("logit"), "logit", pa.array(better.astype(np.float32))
    )
    pq.write_table(scores_table, tmp_path / "gen3.parquet")  # model column "m" in both files
    pq.write_table(gen4, tmp_path / "gen4.parquet")
    proc = _run("--scores", str(tmp_path / "gen4.parquet"), "--out-csv", str(tmp_path / "s.csv"),
                "--compare", str(tmp_path / "gen3.parquet"), "--report-dir", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "s_compare.csv").open()))
    assert [r["model"] for r in rows] == ["m (gen3)", "m"]  # baseline first, names made unique
    assert float(rows[1]["AUROC_delta"]) > 0
    assert "Comparison on the same test set" in (tmp_path / "r/report.md").read_text()
