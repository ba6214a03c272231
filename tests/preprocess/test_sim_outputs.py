"""`haloscope simulate` output: one line when it cannot be written, no half survey, user's umask."""

from __future__ import annotations

from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.run import simulate
from tests.output_faults import (
    assert_umask_modes,
    debris,
    limit_file_size,
    one_error_line,
    run_verb,
    unwritable_out,
)


def test_simulate_into_unwritable_out_is_one_line(tmp_path):
    out = unwritable_out(tmp_path)
    proc = run_verb("simulate", "--out", str(out), "--rows", "64", "--no-progress")
    line = one_error_line(proc, "simulate")
    assert proc.stderr.strip() == line
    assert str(out) in line


def test_simulate_on_a_full_disk_names_the_out_and_leaves_no_half_survey(tmp_path):
    out = tmp_path / "mock"
    args = ("simulate", "--out", str(out), "--rows", "300", "--chunk-rows", "100")
    proc = run_verb(*args, "--workers", "2", "--no-progress", preexec_fn=limit_file_size(1 << 16))
    line = one_error_line(proc, "simulate")
    assert proc.stderr.strip() == line
    assert str(out) in line and "File too large" in line
    assert debris(out) == [] and list(out.rglob("*.parquet")) == []
    assert list(out.iterdir()) == []  # a re-run needs no --overwrite


def test_simulated_parquet_follows_the_umask(tmp_path, umask_022):
    out = tmp_path / "mock"
    simulate(SimConfig(out=str(out), rows=200), progress=False)
    assert list(out.rglob("*.parquet")) and (out / "_mock_survey.json").is_file()
    assert_umask_modes(out)
