"""`haloscope infer` on raw parquet through the real CLI: table layout, counts, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from haloscope.infer.cli import main
from haloscope.infer.table import SCORES_SCHEMA
from tests.infer.infer_fixtures import assert_tables_identical, make_checkpoint, make_dataset

ARCH_COLUMNS = [
    "task_id",
    "ra",
    "dec",
    "brickname",
    "split",
    "label",
    "is_hard_neg",
    "theta_e_arcsec",
    "psf_fwhm_r",
    "theta_over_psf",
    "psfsize_r",
    "psfdepth_r",
    "arc_snr",
    "src_dmag",
    "arc_snr_sum",
    "magnification",
    "arc_lens_flux_ratio",
    "tangential_stretch",
    "radial_stretch",
    "control_kind",
    "logit",
    "score",
    "model",
]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope", "infer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("infer_cli")
    make_dataset(root / "data", num_rows=48)
    make_checkpoint(root / "gen3" / "best.pt")
    return root


@pytest.fixture(scope="module")
def scored(workdir) -> Path:
    out = workdir / "scores" / "test.parquet"
    proc = run_cli("--ckpt", str(workdir / "gen3" / "best.pt"), "--data", str(workdir / "data"),
                   "--split", "test", "--out", str(out), "--batch_size", "16")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_scores_table_has_exactly_the_architecture_columns(scored):
    table = pq.read_table(scored)
    assert table.schema.names == ARCH_COLUMNS
    assert table.schema.remove_metadata().equals(SCORES_SCHEMA)


def test_gates_and_cut_are_applied_and_counted(scored):
    table = pq.read_table(scored)
    meta = table.schema.metadata
    rejected = json.loads(meta[b"rejected"])
    # 48 rows: one cutout_ok=0, one lens with theta_E/PSF < 0.5 (the checkpoint's cut)
    assert rejected == {"rows_read": 48, "rows_kept": 46, "cutout_not_ok": 1, "unresolved": 1}
    assert table.num_rows == 46
    ratio = table.column("theta_over_psf").to_numpy()
    label = table.column("label").to_numpy()
    assert (ratio[label == 1] >= 0.5).all()
    assert set(np.unique(label)) == {0, 1}


def test_logit_and_score_are_fp32_and_consistent(scored):
    table = pq.read_table(scored)
    logit = table.column("logit").to_numpy()
    score = table.column("score").to_numpy()
    assert logit.dtype == np.float32 and score.dtype == np.float32
    ref = (1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
    np.testing.assert_array_equal(score, ref)
    assert np.unique(logit).size == logit.size  # no ties
    assert table.column("model").to_pylist() == ["gen3"] * table.num_rows
    assert table.column("split").to_pylist() == ["test"] * table.num_rows


def test_rows_are_sorted_and_no_temp_file_is_left(scored):
    ids = pq.read_table(scored).column("task_id").to_pylist()
    assert ids == sorted(ids)
    assert [p.name for p in scored.parent.iterdir()] == [scored.name]


def test_checkpoint_needing_a_missing_meta_column_is_refused(workdir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "other" / "best.pt", meta_cols=("psfsize_r", "psfdepth_g"))
    proc = run_cli(
        "--ckpt", str(ckpt), "--data", str(workdir / "data"), "--out", str(tmp_path / "s.parquet")
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "psfdepth_g" in proc.stderr and str(ckpt) in proc.stderr
    assert not (tmp_path / "s.parquet").exists()


def test_missing_checkpoint_and_bad_flags_are_one_line_errors(workdir, tmp_path):
    proc = run_cli("--ckpt", str(tmp_path / "nope.pt"), "--data", str(workdir / "data"),
                   "--out", str(tmp_path / "s.parquet"))  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nope.pt" in proc.stderr and "does not exist" in proc.stderr
    proc = run_cli("--ckpt", "x.pt", "--data", "d", "--out", "s.csv")
    assert proc.returncode == 2 and "--out" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("--ckpt", "x.pt", "--data", "d", "--shards", "s", "--out", "s.parquet")
    assert proc.returncode == 2 and "exactly one of --shards SHARDS or --data DATA" in proc.stderr


def test_decoding_workers_do_not_change_the_table(workdir, scored, tmp_path):
    out = tmp_path / "w0.parquet"
    proc = run_cli("--ckpt", str(workdir / "gen3" / "best.pt"), "--data", str(workdir / "data"),
                   "--split", "test", "--out", str(out), "--batch-size", "16",
                   "--num-workers", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_tables_identical(pq.read_table(out), pq.read_table(scored))  # scored used 2 workers


def test_cuda_graph_step_without_cuda_is_a_clear_error(workdir, tmp_path):
    proc = run_cli(
        "--ckpt",
        str(workdir / "gen3" / "best.pt"),
        "--data",
        str(workdir / "data"),
        "--out",
        str(tmp_path / "s.parquet"),
        "--device",
        "cpu",
        "--step",
        "graph",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--step graph" in proc.stderr and "CUDA" in proc.stderr


def test_tta_changes_scores_but_not_rows(workdir, scored, tmp_path):
    out = tmp_path / "tta.parquet"
    proc = run_cli(
        "--ckpt",
        str(workdir / "gen3" / "best.pt"),
        "--data",
        str(workdir / "data"),
        "--out",
        str(out),
        "--tta",
        "--batch-size",
        "32",
        "--model-name",
        "g3tta",
    )
    assert proc.returncode == 0, proc.stderr
    plain, tta = pq.read_table(scored), pq.read_table(out)
    assert tta.column("task_id").equals(plain.column("task_id"))
    assert not np.array_equal(tta.column("logit").to_numpy(), plain.column("logit").to_numpy())
    assert tta.schema.metadata[b"tta"] == b"True"
    assert set(tta.column("model").to_pylist()) == {"g3tta"}


def test_scores_record_the_checkpoint_as_given_and_resolved(workdir, tmp_path, monkeypatch):
    """The eval report looks for the run's curves.png next to the checkpoint: the metadata
    keeps the path as given (``checkpoint``) and absolute (``checkpoint_resolved``)."""
    monkeypatch.chdir(workdir)
    out = tmp_path / "s.parquet"
    assert main(["--ckpt", "gen3/best.pt", "--data", "data", "--out", str(out),
                 "--num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    meta = pq.read_schema(out).metadata
    assert meta[b"checkpoint"] == b"gen3/best.pt"
    assert meta[b"checkpoint_resolved"] == str(workdir / "gen3" / "best.pt").encode()
