"""`haloscope simulate --survey`: an unlabelled survey whose cutouts carry no truth, the truth
in a separate file that joins 1:1 on id, the same bytes for any number of workers."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from haloscope.preprocess.schema import META_LEAKING
from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.survey import SURVEY_SCHEMA, simulate_survey

# cutout_ok and bandset are refused as *meta inputs*, yet a search needs them to gate rows;
# the mock draws its defects the same way for lenses and controls
_OPERATIONAL = {"cutout_ok", "bandset"}
_TRUTH_PREFIXES = ("src_", "lens_", "arc_", "mock_", "physics_", "is_", "task_", "region_")


def _survey(tmp: Path, name: str, **kw) -> Path:
    cfg = SimConfig(out=str(tmp / name), survey=True, chunk_rows=256, **{"rows": 700, **kw})
    simulate_survey(cfg, progress=False)
    return tmp / name


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    return _survey(tmp_path_factory.mktemp("survey"), "s", seed=3, survey_lens_frac=0.1)


def _digest(root: Path) -> dict[str, str]:
    files = [*sorted(root.glob("cutouts/*.parquet")), root / "truth.parquet"]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_cutouts_carry_no_truth(survey):
    files = sorted((survey / "cutouts").iterdir())
    assert [f.name for f in files] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    groups = [pq.ParquetFile(f).metadata.row_group(0).num_rows for f in files]
    assert groups == [256, 256, 188]  # chunk_rows 256: one row group each (a search's chunk)
    table = pq.read_table(survey / "cutouts")
    assert table.schema.names == SURVEY_SCHEMA.names and table.num_rows == 700
    assert not (table.schema.metadata or {}).keys() - {b"ARROW:schema"}
    for column in table.schema.names:
        assert column in _OPERATIONAL or column not in META_LEAKING, column
        assert not column.startswith(_TRUTH_PREFIXES) and "kind" not in column, column
    assert not list(survey.glob("**/region_split=*"))
    truth = pq.read_table(survey / "truth.parquet")
    assert truth["cutout_ok"].to_pylist() == table["cutout_ok"].to_pylist()


def test_truth_joins_cutouts_one_to_one(survey):
    cutouts = pq.read_table(survey / "cutouts", columns=["id", "cutout_ok", "stamp_npz"])
    truth = pq.read_table(survey / "truth.parquet")
    ids = cutouts["id"].to_pylist()
    assert len(set(ids)) == len(ids) == truth.num_rows
    assert ids == truth["id"].to_pylist()  # the same rows in the same order
    lens = np.asarray(truth["is_lens"]) == 1
    theta, snr = np.asarray(truth["theta_e_arcsec"]), np.asarray(truth["arc_snr"])
    assert 0.05 < lens.mean() < 0.16  # --survey-lens-frac 0.1
    assert np.isfinite(theta[lens]).all() and np.isfinite(snr[lens]).all()
    assert np.isnan(theta[~lens]).all() and np.isnan(snr[~lens]).all()
    assert set(truth["kind"].to_pylist()) >= {"lens", "ordinary"}
    assert (np.asarray(truth["kind"]) == "lens").sum() == lens.sum()
    for row in cutouts.slice(0, 40).to_pylist():
        stamp = np.load(io.BytesIO(row["stamp_npz"]))
        if row["cutout_ok"]:
            assert {"image_r"} <= set(stamp.files) and stamp["image_r"].shape == (64, 64)


def test_same_bytes_for_any_worker_count(tmp_path, survey):
    one = _digest(_survey(tmp_path, "one", seed=3, survey_lens_frac=0.1))
    two = _digest(_survey(tmp_path, "two", seed=3, survey_lens_frac=0.1, workers=2))
    other = _digest(_survey(tmp_path, "other", seed=4, survey_lens_frac=0.1))
    assert one == two == _digest(survey)
    assert one["truth.parquet"] != other["truth.parquet"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope", "simulate", "--survey", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_writes_summary_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "cli"
    proc = _cli("--out", str(out), "--rows", "300")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 300 and summary["truth"] == "truth.parquet"
    assert pq.read_metadata(out / "truth.parquet").num_rows == 300
    again = _cli("--out", str(out), "--rows", "300")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    bad = _cli("--out", str(tmp_path / "bad"), "--rows", "300", "--survey-lens-frac", "2")
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and "--survey-lens-frac" in last and "Traceback" not in bad.stderr
    assert _cli("--out", str(out), "--rows", "200", "--overwrite").returncode == 0
    assert pq.read_metadata(out / "truth.parquet").num_rows == 200
