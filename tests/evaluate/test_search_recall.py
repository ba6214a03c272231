"""Recall of planted lenses in the top N of a search, on a hand-built survey and as a CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import DataError
from haloscope.evaluate.search_recall import format_recall, search_recall

NAN = float("nan")


def _truth() -> pa.Table:
    """10 galaxies: lenses a (detectable), b (faint arc), c (detectable, cutout rejected)."""
    ids = list("abcdefghij")
    lens = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    return pa.table(
        {
            "id": ids,
            "is_lens": pa.array(lens, pa.int8()),
            "kind": ["lens"] * 3 + ["ordinary"] * 6 + ["ring"],
            "theta_e_arcsec": [1.5, 1.2, 2.0] + [NAN] * 7,
            "arc_snr": [12.0, 2.0, 9.0] + [NAN] * 7,
            "psfsize_r": [1.2] * 10,
        }
    )


def _candidates() -> pa.Table:
    """The search ranked 9 of them (c was rejected): ring first, a 2nd, b 5th."""
    order = ["j", "a", "d", "e", "b", "f", "g", "h", "i"]
    return pa.table({"id": order, "rank": np.arange(1, 10), "logit": np.linspace(3, -3, 9)})


def test_recall_counts_lenses_in_the_top_n_and_rejected_ones_as_missed():
    result = search_recall(_candidates(), _truth(), [1, 2, 5, 100])
    assert result["lenses"] == 3 and result["lenses_scored"] == 2 and result["candidates"] == 9
    assert result["detectable"]["lenses"] == 2  # a and c; b's arc_snr 2 is below 5
    top = {e["n"]: e for e in result["top"]}
    assert top[1]["lenses"] == 0 and top[1]["recall"] == 0
    assert top[2]["lenses"] == 1 and top[2]["recall"] == pytest.approx(1 / 3)
    assert top[2]["precision"] == 0.5 and top[2]["detectable_recall"] == 0.5
    assert top[5]["lenses"] == 2 and top[5]["random"] == pytest.approx(5 * 3 / 9)
    assert top[100]["recall"] == pytest.approx(2 / 3) and top[100]["precision"] == pytest.approx(
        2 / 9
    )
    lines = format_recall(result)
    assert lines[0].startswith(
        "planted lenses: 3 in the survey, 2 of them among the 9 ranked candidates"
    )
    assert (
        "top 5: 2 lenses, recall 0.667" in lines[3] and "detectable recall 0.500 (1/2)" in lines[3]
    )


def test_detectable_none_and_unknown_ids():
    result = search_recall(_candidates(), _truth(), [5], detectable="none")
    assert result["detectable"] is None and "detectable_recall" not in result["top"][0]
    strangers = pa.table({"id": ["a", "zz"], "rank": [1, 2]})
    with pytest.raises(DataError, match="1 candidate id"):
        search_recall(strangers, _truth(), [5])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "haloscope.evaluate.search_recall", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_recall_and_writes_json(tmp_path):
    pq.write_table(_candidates(), tmp_path / "candidates.parquet")
    pq.write_table(_truth(), tmp_path / "truth.parquet")
    proc = _cli(
        "--candidates",
        str(tmp_path / "candidates.parquet"),
        "--truth",
        str(tmp_path / "truth.parquet"),
        "--top-n",
        "2,5",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1].startswith("top 2: 1 lenses, recall 0.333")
    assert json.loads(lines[-1]) == json.loads((tmp_path / "r.json").read_text())
    pq.write_table(_truth().drop_columns(["is_lens"]), tmp_path / "bad.parquet")
    for args, message in (
        (["--truth", str(tmp_path / "bad.parquet")], "missing column(s) ['is_lens']"),
        (["--truth", str(tmp_path / "truth.parquet"), "--top-n", "ten"], "--top-n"),
        (["--truth", str(tmp_path / "absent.parquet")], "cannot read"),
    ):
        bad = _cli("--candidates", str(tmp_path / "candidates.parquet"), *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert message in bad.stderr.strip().splitlines()[-1]
