"""`haloscope shards` output: one line when it cannot be written, nothing half-written, umask."""

from __future__ import annotations

import pytest

from tests.output_faults import (
    assert_umask_modes,
    debris,
    limit_file_size,
    one_error_line,
    run_verb,
    unwritable_out,
)
from tests.shards.shard_fixtures import make_survey, run_convert


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return make_survey(tmp_path_factory.mktemp("survey"), sizes={"train": 20, "val": 6, "test": 6})


def test_shards_into_unwritable_out_is_one_line(survey, tmp_path):
    out = unwritable_out(tmp_path)
    proc = run_verb("shards", "--data", str(survey.root), "--out", str(out))
    line = one_error_line(proc, "shards")
    assert proc.stderr.strip() == line
    assert str(out) in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_shards_on_a_full_disk_names_the_out_and_leaves_nothing_half_written(
    survey, tmp_path, workers
):
    out = tmp_path / "shards"
    args = ("--shard-samples", "64", "--record-samples", "16", "--workers", workers)
    proc = run_verb(
        "shards", "--data", str(survey.root), "--out", str(out), *args,
        preexec_fn=limit_file_size(1 << 16),
    )  # fmt: skip
    line = one_error_line(proc, "shards")
    assert str(out) in line and "File too large" in line
    assert debris(out) == []
    assert list(out.rglob("manifest.json")) == []


def test_shards_manifest_and_zarr_follow_the_umask(survey, tmp_path, umask_022):
    out = tmp_path / "shards"
    run_convert(survey.root, out, hard_neg_path=survey.lookup, keep_work=True)
    names = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {"train/manifest.json", "val/stamps.zarr/zarr.json", "_work/train"} <= names
    assert any(n.startswith("train/shard-") for n in names)
    assert any(n.endswith(".dat") for n in names)
    assert_umask_modes(out)
