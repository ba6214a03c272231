"""Every bad input gets a counted reason (rejects.parquet) or one clear error line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from haloscope.cli import main as haloscope
from tests.preprocess.contract_rows import npz_bytes
from tests.search.search_fixtures import (
    error_line,
    make_checkpoint,
    search_here,
    unlabelled_table,
    write_fits,
    write_parquet,
)


def _search(*args: str) -> int:
    return search_here(*args, "--batch-size", "8")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run" / "best.pt")


def _bad_parquet_rows(table: pa.Table) -> tuple[pa.Table, dict[int, str]]:
    """Rows 1..9 of the table broken one way each; returns the table and row -> reason."""
    cols = {n: table.column(n).to_pylist() for n in table.schema.names}
    nan_stamp = np.ones((3, 64, 64), np.float32)
    nan_stamp[1, 5, 5] = np.nan
    bad = {
        1: "cutout_not_ok",
        2: "missing_band",
        3: "missing_band",
        4: "undecodable",
        5: "bad_shape",
        6: "non_finite",
        7: "bad_meta",
        8: "bad_position",
        9: "duplicate_id",
    }
    cols["cutout_ok"][1] = 0
    cols["bandset"][2] = "r"
    cols["stamp_npz"][3] = npz_bytes(nan_stamp[:2] * 0, keys=("image_g", "image_r"))
    cols["stamp_npz"][4] = b"not an npz"
    cols["stamp_npz"][5] = npz_bytes(np.zeros((3, 32, 32), np.float32))
    cols["stamp_npz"][6] = npz_bytes(nan_stamp)
    cols["psfsize_r"][7] = float("nan")
    cols["ra"][8] = float("nan")
    cols["task_id"][9] = cols["task_id"][0]
    return pa.table(cols, schema=table.schema), bad


def test_bad_parquet_rows_are_counted_and_listed(tmp_path, ckpt):
    table, _ = unlabelled_table(16)
    table, bad = _bad_parquet_rows(table)
    ids = table.column("task_id").to_pylist()
    data = write_parquet(table, tmp_path / "bad.parquet")
    assert _search("--input", str(data), "--ckpt", str(ckpt), "--out", str(tmp_path / "o")) == 0
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    assert sorted((r["id"], r["reason"]) for r in rejects) == sorted(
        (ids[i], why) for i, why in bad.items()
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["rejected_by_reason"] == {
        "bad_meta": 1,
        "bad_position": 1,
        "bad_shape": 1,
        "cutout_not_ok": 1,
        "duplicate_id": 1,
        "missing_band": 2,
        "non_finite": 1,
        "undecodable": 1,
    }
    assert summary["scored"] == 16 - len(bad) and summary["rows"] == 16
    cand = pq.read_table(tmp_path / "o" / "candidates.parquet").column("id").to_pylist()
    assert ids[0] in cand and len(cand) == len(set(cand))


def test_bad_fits_files_are_counted_and_a_large_cutout_is_centre_cropped(tmp_path, ckpt):
    table, stamps = unlabelled_table(8)
    ids = table.column("task_id").to_pylist()
    folder = write_fits(stamps[:3], ids[:3], tmp_path / "fits")
    (folder / f"{ids[3]}.fits").write_bytes(b"SIMPLE  = garbage")  # unreadable
    two = fits.PrimaryHDU(stamps[4][:2])
    two.header["BAND0"], two.header["BAND1"] = "g", "r"
    two.writeto(folder / f"{ids[4]}.fits")  # missing band z
    fits.PrimaryHDU(stamps[5][:, :32, :32]).writeto(folder / f"{ids[5]}.fits")  # too small
    nan = stamps[6].copy()
    nan[2, 3, 3] = np.nan
    fits.PrimaryHDU(nan).writeto(folder / f"{ids[6]}.fits")
    write_fits(stamps[7:8], ids[7:8], folder)  # left out of the catalogue below
    big = np.zeros((3, 80, 80), np.float32)  # 80x80: the central 64x64 is stamp 0
    big[:, 8:72, 8:72] = stamps[0]
    hdu = fits.PrimaryHDU(big)
    hdu.header["BANDS"] = "grz"
    hdu.header["CRVAL1"], hdu.header["CRVAL2"] = 1.0, 2.0  # position from the header
    hdu.writeto(folder / "big.fits")
    rows = [*range(7), 0]  # catalogue rows: files 0..6 and big.fits (meta of row 0)
    cat = pa.table(
        {
            "file": [f"{ids[i]}.fits" for i in range(7)] + ["big.fits"],
            **{c: table.column(c).take(rows) for c in ("ra", "psfsize_r", "psfdepth_r")},
            "dec": table.column("dec").take(rows),
        }
    )
    cat = cat.set_column(1, "ra", pa.array([*table.column("ra").to_pylist()[:7], None]))
    pq.write_table(cat, tmp_path / "cat.parquet")
    out = tmp_path / "o"
    assert _search("--input", str(folder), "--catalog", str(tmp_path / "cat.parquet"),
                   "--out", str(out), "--ckpt", str(ckpt)) == 0  # fmt: skip
    rejects = {r["id"]: r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert rejects == {
        ids[3]: "unreadable_fits",
        ids[4]: "missing_band",
        ids[5]: "bad_shape",
        ids[6]: "non_finite",
        ids[7]: "no_catalog_row",
    }
    cand = pq.read_table(out / "candidates.parquet")
    logit = dict(zip(cand.column("id").to_pylist(), cand.column("logit").to_pylist(), strict=True))
    assert set(logit) == {ids[0], ids[1], ids[2], "big"}
    assert abs(logit["big"] - logit[ids[0]]) < 1e-5  # same pixels, batched with other rows
    big_row = cand.filter(pa.compute.equal(cand.column("id"), "big")).to_pylist()[0]
    assert big_row["ra"] == 1.0  # the catalogue's ra is null: the header's CRVAL1


def _write_unlabelled(tmp_path, columns=None):
    table, _ = unlabelled_table(8)
    if columns is not None:
        table = table.select(columns)
    return write_parquet(table, tmp_path / "in.parquet")


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing_meta", "missing column(s) psfdepth_r"),
        ("missing_stamp", "missing column(s) stamp_npz"),
        ("no_input", "no such file, folder or glob match"),
        ("fits_without_catalog", "give --catalog"),
        ("catalog_for_parquet", "--catalog is for a folder of FITS cutouts"),
        ("catalog_lacks_meta", "missing column(s) psfdepth_r"),
        ("foreign_out", "is not a search folder"),
        ("bad_batch", "--batch-size must be >= 1"),
        ("ensemble_mismatch", "an ensemble needs one preprocessing"),
    ],
)
def test_bad_invocations_are_one_line(tmp_path, ckpt, capsys, case, expect):
    data = _write_unlabelled(tmp_path)
    out = tmp_path / "o"
    argv = ["--input", str(data), "--ckpt", str(ckpt), "--out", str(out)]
    if case == "missing_meta":
        argv[1] = str(
            _write_unlabelled(tmp_path, ["task_id", "ra", "dec", "stamp_npz", "psfsize_r"])
        )
    elif case == "missing_stamp":
        argv[1] = str(_write_unlabelled(tmp_path, ["ra", "dec", "psfsize_r", "psfdepth_r"]))
    elif case == "no_input":
        argv[1] = str(tmp_path / "nothing*.parquet")
    elif case in ("fits_without_catalog", "catalog_lacks_meta"):
        _, stamps = unlabelled_table(8)
        argv[1] = str(write_fits(stamps[:2], ["a", "b"], tmp_path / "fits"))
        if case == "catalog_lacks_meta":
            (tmp_path / "c.csv").write_text("id,psfsize_r\na,1.0\nb,1.1\n")
            argv += ["--catalog", str(tmp_path / "c.csv")]
    elif case == "catalog_for_parquet":
        argv += ["--catalog", str(data)]
    elif case == "foreign_out":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "bad_batch":
        argv += ["--batch-size", "0"]
    elif case == "ensemble_mismatch":
        other = make_checkpoint(tmp_path / "r2" / "best.pt", meta_cols=("psfsize_r",))
        argv[3:4] = [str(ckpt), str(other)]
    if case == "bad_batch":
        rc = haloscope(["search", *argv, "--device", "cpu", "--no-progress"])
    else:
        rc = _search(*argv)
    assert rc == 2
    assert expect in error_line(capsys)


def test_train_refuses_unlabelled_shards(tmp_path, capsys):
    data = _write_unlabelled(tmp_path)
    assert haloscope(["shards", "--unlabelled", "--data", str(data), "--out",
                      str(tmp_path / "shards"), "--no-progress"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "shards" / "search" / "manifest.json").read_text())
    assert manifest["unlabelled"] is True and manifest["num_samples"] == 8
    capsys.readouterr()
    rc = haloscope(["train", "--shards", str(tmp_path / "shards"), "--device", "cpu",
                    "--out-dir", str(tmp_path / "run")])  # fmt: skip
    assert rc == 2
    assert "unlabelled" in error_line(capsys)


def test_shards_of_other_preprocessing_are_refused(tmp_path, ckpt, capsys):
    data = _write_unlabelled(tmp_path)
    assert haloscope(["shards", "--unlabelled", "--data", str(data), "--out",
                      str(tmp_path / "shards"), "--norm-method", "outer",
                      "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert (
        _search(
            "--input", str(tmp_path / "shards"), "--ckpt", str(ckpt), "--out", str(tmp_path / "o")
        )
        == 2
    )
    assert "norm" in error_line(capsys)
