"""The input contract: outer normalisation, decoding, gates with counted reasons, layout checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import ContractError
from haloscope.preprocess import decode, gates, normalize, schema
from tests.preprocess.contract_rows import SCHEMA, base_row, npz_bytes, to_table, write_dataset


def _direct_outer(stamp: np.ndarray) -> np.ndarray:
    """Per band, loop form of the seed's robust_mad_norm_outer (inner_frac=0.5, clip 10)."""
    out = np.empty_like(stamp, dtype=np.float64)
    h, w = stamp.shape[1:]
    ri = int(min(h, w) * 0.5 / 2)
    for b in range(stamp.shape[0]):
        px = [
            stamp[b, y, x]
            for y in range(h)
            for x in range(w)
            if (y - 32) ** 2 + (x - 32) ** 2 > ri**2
        ]
        px = np.array(px, dtype=np.float64)
        med = np.median(px)
        mad = np.median(np.abs(px - med))
        out[b] = np.clip((stamp[b] - med) / (1.4826 * mad + 1e-6), -10, 10)
    return out


def test_outer_mask_has_3299_pixels():
    assert normalize.outer_mask().sum() == 3299


def test_outer_normalize_matches_direct_computation():
    rng = np.random.default_rng(1)
    stamps = rng.lognormal(-3, 1.5, (4, 3, 64, 64)).astype(np.float32)
    stamps[:, :, 28:36, 28:36] += 5.0  # a bright core must not enter the statistics
    got = normalize.outer_normalize(stamps)
    assert got.dtype == np.float32 and got.shape == stamps.shape
    for i in range(len(stamps)):
        np.testing.assert_allclose(got[i], _direct_outer(stamps[i]), rtol=2e-5, atol=2e-5)
    assert got.max() == 10.0  # the core is clipped


@pytest.mark.parametrize("compressed", [True, False])
def test_fast_decode_equals_np_load(compressed):
    rng = np.random.default_rng(2)
    stamp = rng.normal(size=(3, 64, 64)).astype(np.float32)
    stamps, codes = decode.decode_stamps([npz_bytes(stamp, compressed=compressed)])
    assert codes.tolist() == [decode.DECODE_OK]
    np.testing.assert_array_equal(stamps[0], stamp)


def _crafted_rows():
    rng = np.random.default_rng(3)
    rows = {"ok_control": base_row(0, rng), "ok_lens": base_row(1, rng, is_control=0)}
    rows["bad_label"] = base_row(2, rng) | {"is_control": 2}
    rows["cutout_not_ok"] = base_row(3, rng) | {
        "cutout_ok": 0,
        "stamp_npz": npz_bytes(keys=("image_r",)),
    }
    rows["r_only_bandset"] = base_row(4, rng) | {
        "bandset": "r",
        "stamp_npz": npz_bytes(keys=("image_r",)),
    }
    rows["unresolved"] = base_row(5, rng, is_control=0) | {"theta_e_arcsec": 0.5}  # 0.5/1.2 < 0.5
    rows["undecodable"] = base_row(6, rng) | {"stamp_npz": b"PK\x03\x04garbage"}
    rows["bad_keys"] = base_row(7, rng) | {"stamp_npz": npz_bytes(keys=("image_g", "image_r"))}
    rows["bad_shape"] = base_row(8, rng) | {
        "stamp_npz": npz_bytes(np.zeros((3, 32, 32), np.float32))
    }
    nan_stamp = np.zeros((3, 64, 64), np.float32)
    nan_stamp[1, 5, 5] = np.nan
    rows["non_finite"] = base_row(9, rng) | {"stamp_npz": npz_bytes(nan_stamp)}
    return rows


def test_every_rejection_reason_is_counted_once():
    rows = _crafted_rows()
    batch = to_table(list(rows.values())).to_batches()[0]
    result = gates.gate_batch(batch, min_theta_over_psf=0.5)
    assert result.kept.tolist() == [0, 1]
    np.testing.assert_array_equal(result.stamps[0], rows["ok_control"]["_stamp"])
    np.testing.assert_array_equal(result.stamps[1], rows["ok_lens"]["_stamp"])
    expected = {name: 1 for name in rows if not name.startswith("ok_")}
    assert dict(result.rejected) == expected
    assert set(expected) == set(gates.REASONS)
    assert sum(result.rejected.values()) + len(result.kept) == batch.num_rows


def test_resolvability_uses_psfsize_when_used_psf_missing():
    rng = np.random.default_rng(4)
    lens = base_row(0, rng, is_control=0) | {
        "psf_fwhm_used_r": None,
        "psfsize_r": 4.0,
        "theta_e_arcsec": 1.5,
    }
    batch = to_table([lens]).to_batches()[0]
    ratio, psf = gates.theta_over_psf(batch)
    assert psf[0] == 4.0 and ratio[0] == pytest.approx(0.375)
    assert gates.gate_batch(batch, 0.5).rejected == {"unresolved": 1}
    assert len(gates.gate_batch(batch, 0.3).kept) == 1


def test_controls_are_never_cut_for_resolvability():
    rng = np.random.default_rng(5)
    batch = to_table([base_row(0, rng)]).to_batches()[0]
    assert len(gates.gate_batch(batch, 10.0).kept) == 1


def test_validate_dataset_accepts_contract_and_counts_rows(tmp_path):
    rng = np.random.default_rng(6)
    write_dataset(tmp_path, {s: [base_row(i, rng) for i in range(3)] for s in schema.SPLITS})
    layout = schema.validate_dataset(tmp_path)
    assert layout.num_rows == {"train": 3, "val": 3, "test": 3}


def test_validate_dataset_rejects_wrong_type(tmp_path):
    rng = np.random.default_rng(7)
    bad = SCHEMA.set(SCHEMA.get_field_index("ra"), pa.field("ra", pa.string()))
    rows = [base_row(0, rng) | {"ra": "150.0"}]
    write_dataset(tmp_path, {s: rows for s in schema.SPLITS}, schema=bad)
    with pytest.raises(ContractError, match=r"column 'ra' has type string"):
        schema.validate_dataset(tmp_path)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_missing_column_names_file_and_column(tmp_path):
    rng = np.random.default_rng(8)
    no_snr = pa.schema([f for f in SCHEMA if f.name != "arc_snr"])
    write_dataset(tmp_path, {s: [base_row(0, rng)] for s in schema.SPLITS}, schema=no_snr)
    proc = _run_cli("validate", "--data", str(tmp_path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "arc_snr" in lines[0] and "part-00000.parquet" in lines[0]


def test_cli_non_hive_layout_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(9)
    pq.write_table(to_table([base_row(0, rng)]), tmp_path / "part-0.parquet")
    proc = _run_cli("validate", "--data", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "region_split=train|val|test" in proc.stderr and "part-0.parquet" in proc.stderr


def test_cli_validate_ok(tmp_path):
    rng = np.random.default_rng(10)
    write_dataset(tmp_path, {s: [base_row(0, rng), base_row(1, rng)] for s in schema.SPLITS})
    proc = _run_cli("validate", "--data", str(tmp_path), "--splits", "train,test")
    assert proc.returncode == 0, proc.stderr
    assert "train: 1 files, 2 rows" in proc.stdout and "OK" in proc.stdout
