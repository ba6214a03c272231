"""Hard-negative lookup: formats, rounding, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import DataError
from haloscope.preprocess.hardneg import load_lookup, position_keys


def _write(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_ra_key_dec_key_match_rounded_positions(tmp_path):
    lk = load_lookup(
        _write(tmp_path / "l.parquet", ra_key=[150.123457, 10.0], dec_key=[-2.000001, 0.5])
    )
    ra = np.array([150.1234567, 150.1234561, 10.0000004, 10.0])
    dec = np.array([-2.0000014, -2.000001, 0.5, 0.500001])
    assert lk.match(ra, dec).tolist() == [True, False, True, False]
    assert lk.provenance()["num_positions"] == 2 and len(lk.sha256) == 64


def test_plain_ra_dec_columns_and_duplicates(tmp_path):
    lk = load_lookup(
        _write(tmp_path / "l.parquet", ra=[1.0, 1.0, 359.9999995], dec=[89.9, 89.9, -90.0])
    )
    assert lk.columns == ("ra", "dec") and lk.num_rows == 3 and len(lk.keys) == 2
    assert lk.match(np.array([1.0, 360.0]), np.array([89.9, -90.0])).tolist() == [True, True]


def test_position_keys_are_injective_on_the_sky_grid():
    ra = np.array([0.0, 0.000001, 359.999999, 0.0, 0.0])
    dec = np.array([0.0, 0.0, 0.0, 90.0, -90.0])
    keys = position_keys(ra, dec)
    assert len(set(keys.tolist())) == 5
    assert position_keys(np.array([np.nan]), np.array([0.0]))[0] == -1


@pytest.mark.parametrize("case", ["missing", "empty", "no_columns", "nan", "not_parquet"])
def test_bad_lookups_are_clear_errors(tmp_path, case):
    path = tmp_path / "l.parquet"
    if case == "empty":
        _write(path, ra_key=pa.array([], pa.float64()), dec_key=pa.array([], pa.float64()))
    elif case == "no_columns":
        _write(path, x=[1.0], y=[2.0])
    elif case == "nan":
        _write(path, ra_key=[1.0, None], dec_key=[2.0, 3.0])
    elif case == "not_parquet":
        path.write_bytes(b"hello")
    message = {
        "missing": "not found",
        "empty": "empty",
        "no_columns": "ra_key, dec_key",
        "nan": "non-finite",
        "not_parquet": "unreadable",
    }[case]
    with pytest.raises(DataError, match=message) as err:
        load_lookup(path)
    assert str(path) in str(err.value)
