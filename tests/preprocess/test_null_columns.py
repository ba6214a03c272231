"""Columns entirely NULL (parquet type ``null``) where the contract allows NULL: validate, shards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import ContractError
from haloscope.preprocess.schema import validate_dataset
from haloscope.shards.manifest import load_manifest
from tests.preprocess.contract_rows import base_row
from tests.shards.shard_fixtures import make_survey, run_convert

HALOSCOPE = Path(sys.executable).parent / "haloscope"


def _replace_split(root: Path, split: str, table: pa.Table) -> None:
    part = root / f"region_split={split}"
    for old in part.glob("*.parquet"):
        old.unlink()
    pq.write_table(table, part / "part-00000.parquet")


def _control_only_file_from_pylist(n: int) -> pa.Table:
    """Controls written as a user would: ``from_pylist`` types every all-None column ``null``."""
    rng = np.random.default_rng(9)
    rows = [base_row(700 + i, rng) for i in range(n)]
    for row in rows:
        row.pop("_stamp")
        row["bandset"] = None  # optional column, NULL everywhere
    table = pa.Table.from_pylist(rows)
    assert pa.types.is_null(table.schema.field("psf_fwhm_used_r").type)
    assert pa.types.is_null(table.schema.field("arc_snr").type)
    return table


def test_null_typed_columns_accepted_where_null_is_allowed(tmp_path):
    survey = make_survey(tmp_path, sizes={"train": 12, "val": 4, "test": 4})
    table = _control_only_file_from_pylist(5)
    _replace_split(survey.root, "val", table)
    validate_dataset(survey.root)
    proc = subprocess.run(
        [str(HALOSCOPE), "validate", "--data", str(survey.root)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    run_convert(survey.root, tmp_path / "shards")
    val = load_manifest(tmp_path / "shards" / "val")
    assert val.num_samples == 5 and val.counts["control"] == 5 and val.rejected == {}
    # a column the contract needs filled (here a meta input) stays refused when all NULL
    where = table.schema.get_field_index("psfsize_r")
    _replace_split(survey.root, "val", table.set_column(where, "psfsize_r", pa.nulls(5)))
    with pytest.raises(ContractError, match="psfsize_r.*type null"):
        validate_dataset(survey.root)
