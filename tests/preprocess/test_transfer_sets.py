"""The independent (lenstronomy) renderer of the transfer check."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("lenstronomy", reason="the transfer renderer needs lenstronomy (test extra)")

from haloscope.preprocess.sim import transfer as ts  # noqa: E402


def test_sky_sigma_matches_the_science_table():
    # science.md 2.4: r depth 24.2, psfsize 1.35" -> 0.0054 nmgy; g 24.8 / 1.50 -> 0.0028
    sigma = ts.sky_sigma(np.array([24.8, 24.2, 23.3]), np.array([1.50, 1.35, 1.30]))
    np.testing.assert_allclose(sigma, [0.0028, 0.0054, 0.0128], rtol=0.03)


def test_moffat_kernel_has_the_asked_fwhm():
    fwhm = 1.1
    k = ts.moffat_kernel(fwhm, half=40)
    profile = k[40, 40:]
    # half maximum crossed at FWHM/2 (interpolated along the row through the centre)
    r_half = np.interp(0.5, profile[::-1] / profile[0], np.arange(len(profile))[::-1])
    # pixel-integrated kernel is slightly broader than the analytic profile
    assert r_half * ts.PIX == pytest.approx(fwhm / 2, rel=0.06)
    assert k.sum() == pytest.approx(1.0)


def _stamp(row) -> np.ndarray:
    z = np.load(io.BytesIO(row["stamp_npz"]))
    return np.stack([z["image_g"], z["image_r"], z["image_z"]])


def test_lenses_carry_truth_and_controls_do_not():
    r = ts._Renderer()
    lens = ts.render_system(r, "lens", 7)
    assert lens["is_control"] == 0 and lens["arc_snr"] > 0 and lens["magnification"] > 1
    assert 0.8 <= lens["theta_e_arcsec"] <= 2.6
    assert lens["src_dmag"] == pytest.approx(lens["src_mag_r"] - lens["lens_mag_r"])
    for kind in ("ordinary", *ts.CONFUSER_KINDS):
        row = ts.render_system(r, kind, 7)
        assert row["is_control"] == 1 and row["arc_snr"] is None and row["control_kind"] == kind
        assert row["theta_e_arcsec"] == 0.0
    stamp = _stamp(lens)
    assert stamp.shape == (3, 64, 64) and stamp.dtype == np.float32
    # the LRG sits at pixel (32, 32), as the contract says
    assert np.unravel_index(np.argmax(stamp[2]), (64, 64)) == (32, 32)


def test_a_lens_differs_from_its_lrg_only_by_the_arc():
    """Same seed draws the same LRG and conditions first: the lens adds flux, nothing else."""
    r = ts._Renderer()
    lens, ctrl = ts.render_system(r, "lens", 3), ts.render_system(r, "ordinary", 3)
    assert lens["psfsize_r"] == ctrl["psfsize_r"] and lens["lens_mag_r"] == ctrl["lens_mag_r"]
    assert _stamp(lens)[1].sum() > _stamp(ctrl)[1].sum()


def test_cli_writes_a_contract_table_identical_for_any_workers(tmp_path):
    def run(out, workers):
        proc = subprocess.run(
            [sys.executable, "-m", "haloscope", "transfer-sets", "--out", str(out),
             "--lenses", "6", "--controls", "2", "--confusers", "4",
             "--workers", str(workers), "--no-progress"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return pq.read_table(out / "region_split=test" / "part-00000.parquet")

    one, two = run(tmp_path / "a", 1), run(tmp_path / "b", 2)
    assert one.equals(two)
    assert one.num_rows == 12 and sum(one["is_control"].to_pylist()) == 6
    proc = subprocess.run(
        [sys.executable, "-m", "haloscope", "validate", "--data", str(tmp_path / "a"),
         "--splits", "test"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_cli_refuses_to_overwrite_and_bad_counts(tmp_path):
    args = [sys.executable, "-m", "haloscope", "transfer-sets", "--out", str(tmp_path)]
    (tmp_path / "region_split=test").mkdir()
    (tmp_path / "region_split=test" / "part-00000.parquet").write_bytes(b"x")
    proc = subprocess.run([*args, "--lenses", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*args, "--lenses", "-1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--lenses" in proc.stderr and "Traceback" not in proc.stderr
