"""Mining: controls only, never test, min-score, top-k per model, merge and de-dup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from haloscope.errors import ConfigError, DataError
from haloscope.evaluate import mine
from haloscope.evaluate.mine import LOOKUP_SCHEMA, mine_frames, mine_hard_negatives, write_lookup
from haloscope.evaluate.scores import scores_from_table
from haloscope.preprocess import hardneg

HALOSCOPE = str(Path(sys.executable).with_name("haloscope"))


def _table(rows: list[tuple], model: str = "gen3") -> pa.Table:
    """rows of (ra, dec, label, score, split)."""
    ra, dec, label, score, split = zip(*rows, strict=True)
    return pa.table(
        {
            "ra": ra,
            "dec": dec,
            "label": pa.array(label, pa.int8()),
            "score": pa.array(score, pa.float32()),
            "split": split,
            "model": [model] * len(rows),
        }
    )


def _frame(rows, model="gen3"):
    return scores_from_table(_table(rows, model), f"{model}.parquet", need_both_classes=False)


ROWS = [
    (10.0, 1.0, 0, 0.99, "train"),
    (10.0000001, 1.0000002, 0, 0.95, "train"),  # same position key as the first row
    (11.0, 1.0, 1, 0.999, "train"),  # a lens: never mined
    (12.0, 1.0, 0, 0.97, "val"),  # val: only with --split val
    (13.0, 1.0, 0, 0.93, "train"),
    (14.0, 1.0, 0, 0.5, "train"),  # below min-score
]


def test_controls_only_dedup_and_min_score():
    table = mine_frames([_frame(ROWS)], min_score=0.9)
    assert table.schema == LOOKUP_SCHEMA
    assert table.column("ra_key").to_pylist() == [10.0, 13.0]
    assert table.column("max_score").to_pylist() == pytest.approx([0.99, 0.93])
    both = mine_frames([_frame(ROWS)], min_score=0.9, splits=("train", "val"))
    assert both.column("ra_key").to_pylist() == [10.0, 12.0, 13.0]
    assert set(both.column("split").to_pylist()) == {"train", "val"}


def test_top_k_per_model_then_merge():
    other = [
        (13.0, 1.0, 0, 0.96, "train"),
        (15.0, 2.0, 0, 0.91, "train"),
        (16.0, 2.0, 0, 0.92, "train"),
    ]
    table = mine_frames([_frame(ROWS, "gen2"), _frame(other, "gen3")], min_score=0.9, top_k=1)
    # gen2's top-1 is (10,1); gen3's top-1 is (13,1): two positions, one model each
    assert table.column("ra_key").to_pylist() == [10.0, 13.0]  # by max_score
    table = mine_frames([_frame(ROWS, "gen2"), _frame(other, "gen3")], min_score=0.9, top_k=5)
    row = next(r for r in table.to_pylist() if r["ra_key"] == 13.0)
    assert (row["num_models"], row["models"], row["max_score"]) == (
        2,
        "gen2,gen3",
        pytest.approx(0.96),
    )
    assert table.num_rows == 4


def test_random_tables_never_yield_positives_or_test_rows():
    rng = np.random.default_rng(0)
    n = 500
    rows = list(
        zip(
            rng.uniform(0, 5, n).round(2),
            rng.uniform(0, 5, n).round(2),
            rng.integers(0, 2, n).tolist(),
            rng.random(n).tolist(),
            rng.choice(["train", "val"], n).tolist(),
            strict=True,
        )
    )
    table = mine_frames([_frame(rows)], min_score=0.5, top_k=10_000, splits=("train",))
    controls = {
        (round(r[0], 6), round(r[1], 6))
        for r in rows
        if r[2] == 0 and r[4] == "train" and r[3] > 0.5
    }
    keys = set(
        zip(table.column("ra_key").to_pylist(), table.column("dec_key").to_pylist(), strict=True)
    )
    assert keys == controls and len(keys) == table.num_rows


def test_test_split_and_empty_results_are_errors():
    with pytest.raises(ConfigError, match="--split test is refused"):
        mine_frames([_frame(ROWS)], splits=("test",))
    with pytest.raises(DataError, match="split == 'test'"):
        mine_frames([_frame([*ROWS, (20.0, 1.0, 0, 0.99, "test")])])
    with pytest.raises(DataError, match="lower --min-score"):
        mine_frames([_frame(ROWS)], min_score=0.999)


def test_mine_writes_lookup_and_cli_errors(tmp_path):
    pq.write_table(_table(ROWS), tmp_path / "gen3.parquet")
    out = tmp_path / "lookup.parquet"
    mine_hard_negatives([tmp_path / "gen3.parquet"], out, min_score=0.9)
    written = pq.read_table(out)
    assert written.num_rows == 2 and b"haloscope.mine" in written.schema.metadata
    proc = subprocess.run([HALOSCOPE, "mine", "--scores", str(tmp_path / "gen3.parquet"),
                           "--out", str(out), "--split", "test"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("haloscope mine: error: --split test")
    proc = subprocess.run([HALOSCOPE, "mine", "--scores", str(tmp_path / "nope.parquet"),
                           "--out", str(out), "--min_score", "0.5"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "scores file not found" in proc.stderr


def test_top_k_breaks_saturated_score_ties_by_logit():
    table = _table(
        [(1.0, 1.0, 0, 1.0, "train"), (2.0, 1.0, 0, 1.0, "train"), (3.0, 1.0, 0, 1.0, "train")]
    )
    table = table.append_column("logit", pa.array([17.0, 30.0, 20.0], pa.float32()))
    frame = scores_from_table(table, "gen3.parquet", need_both_classes=False)
    assert mine_frames([frame], min_score=0.9, top_k=2).column("ra_key").to_pylist() == [2.0, 3.0]


def test_min_count_takes_the_top_controls_when_too_few_pass():
    """Only 2 positions pass 0.9; min_count 3 takes the 3 best controls (no lens, no dup)."""
    table = mine_frames([_frame(ROWS)], min_score=0.9, min_count=3)
    assert table.column("ra_key").to_pylist() == [10.0, 13.0, 14.0]
    # enough pass: the threshold holds and top_k still caps
    assert mine_frames([_frame(ROWS)], min_score=0.9, min_count=2).num_rows == 2
    assert mine_frames([_frame(ROWS)], min_score=0.9, top_k=2, min_count=5).num_rows == 2
    with pytest.raises(ConfigError, match="--min-count"):
        mine_frames([_frame(ROWS)], min_count=-1)


def test_min_count_on_random_scores_keeps_the_highest_controls():
    rng = np.random.default_rng(3)
    n = 2000
    rows = [
        (float(i), 0.0, int(rng.random() < 0.3), float(rng.random() * 0.8), "train")
        for i in range(n)
    ]
    table = mine_frames([_frame(rows)], min_score=0.9, top_k=500, min_count=100)
    controls = sorted((r[3] for r in rows if r[2] == 0), reverse=True)
    assert table.num_rows == 100
    assert min(table.column("max_score").to_pylist()) == pytest.approx(controls[99], rel=1e-6)
    lens_keys = {r[0] for r in rows if r[2] == 1}
    assert not lens_keys & set(table.column("ra_key").to_pylist())


def test_nan_position_of_any_eligible_control_is_an_error_even_beyond_top_k():
    rows = [*ROWS, (float("nan"), 1.0, 0, 0.91, "train")]  # passes 0.9, ranks last
    with pytest.raises(DataError, match="NaN"):
        mine_frames([_frame(rows)], min_score=0.9, top_k=1)
    below = [*ROWS, (float("nan"), 1.0, 0, 0.2, "train")]  # eligible only when filling
    assert mine_frames([_frame(below)], min_score=0.9).num_rows == 2
    with pytest.raises(DataError, match="NaN"):
        mine_frames([_frame(below)], min_score=0.9, top_k=1, min_count=5)


def test_a_mined_position_is_found_by_the_converter(tmp_path):
    """One key function: mine writes the converter's key, whose lookup then matches positions
    that differ from the mined ones in the last float digits."""
    assert mine.position_keys is hardneg.position_keys  # one owner, used by both sides
    ra = np.array([0.1 + 0.2, 150.123457, 359.999999, 12.5, 7.0000004])
    dec = np.array([-(0.1 + 0.2), 2.000001, -89.999999, 60.0, 0.0000004])
    rows = [
        (r, d, 0, 0.99 - 0.01 * i, "train") for i, (r, d) in enumerate(zip(ra, dec, strict=True))
    ]
    table = mine_frames([_frame(rows)], min_score=0.9)
    # the on-disk columns are unchanged: degrees rounded to 6 decimals
    assert table.column("ra_key").to_pylist() == np.round(ra, 6).tolist()
    assert table.column("dec_key").to_pylist() == np.round(dec, 6).tolist()
    path = write_lookup(table, tmp_path / "lookup.parquet", {})
    lookup = hardneg.load_lookup(path)
    for steps in (-3, -1, 1, 3):  # ulps away from the mined coordinates
        near_ra = ra + steps * np.spacing(ra)
        near_dec = dec + steps * np.spacing(np.abs(dec))
        assert not (near_ra == ra).all()
        assert lookup.match(near_ra, near_dec).all(), steps
    assert not lookup.match(ra + 1.1e-6, dec).any()  # a micro-degree off is another position


def test_key_columns_invert_position_keys():
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 1000), rng.uniform(-90, 90, 1000)
    keys = hardneg.position_keys(ra, dec)
    ra_key, dec_key = hardneg.key_columns(keys)
    assert (ra_key == np.round(ra, 6)).all() and (dec_key == np.round(dec, 6)).all()
    assert (hardneg.position_keys(ra_key, dec_key) == keys).all()
    with pytest.raises(ValueError, match="non-finite"):
        hardneg.key_columns(hardneg.position_keys(np.array([np.nan]), np.array([0.0])))
