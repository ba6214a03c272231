"""Shard writing, indexing, bucket spill/dedup and the epoch plan, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from haloscope.errors import DataError
from haloscope.shards.buckets import (
    dedup_and_order,
    load_part_record,
    open_part,
    read_bucket,
    row_dtype,
    shuffle_keys,
    stamp_digests,
)
from haloscope.shards.index import index_shard_bytes
from haloscope.shards.plan import EpochPlan, rank_span
from haloscope.shards.schema import TABLE_DTYPE
from haloscope.shards.write import tar_bytes, write_shard


def _arrays(n: int, m: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, 3, 64, 64)).astype(np.float16)
    meta = rng.normal(size=(n, m)).astype(np.float32)
    table = np.zeros(n, TABLE_DTYPE)
    table["label"] = rng.integers(0, 2, n)
    table["task_id"] = [f"t{i}".encode() for i in range(n)]
    return image, meta, table


def test_tar_is_deterministic_and_indexes_back(tmp_path):
    image, meta, table = _arrays(37)
    data = tar_bytes(image, meta, table, record_samples=16)
    assert data == tar_bytes(image.copy(), meta.copy(), table.copy(), record_samples=16)
    info = write_shard(tmp_path / "s.tar", image, meta, table, record_samples=16)
    assert info.records == [16, 16, 5] and info.bytes == len(data)
    assert (tmp_path / "s.tar").read_bytes() == data
    views = index_shard_bytes(data, tmp_path / "s.tar", info.records, 2)
    np.testing.assert_array_equal(np.concatenate([v.image for v in views]), image)
    np.testing.assert_array_equal(np.concatenate([v.table for v in views]), table)
    with pytest.raises(DataError, match="manifest says"):
        index_shard_bytes(data, tmp_path / "s.tar", [16, 15, 6], 2)
    with pytest.raises(DataError, match="meta"):
        index_shard_bytes(data, tmp_path / "s.tar", info.records, 3)
    with pytest.raises(DataError, match="truncated"):
        index_shard_bytes(data[: len(data) // 2], tmp_path / "s.tar", info.records, 2)


def _rows(n: int, digests: np.ndarray, copies: np.ndarray, order: np.ndarray) -> np.ndarray:
    rows = np.zeros(n, row_dtype(1))
    rows["digest"], rows["copy"], rows["order"] = digests, copies, order
    rows["hkey"] = shuffle_keys(digests, copies, seed=5)
    rows["meta"][:, 0] = order
    return rows


def test_dedup_keeps_first_occurrence_per_digest_and_copy():
    stamps = np.random.default_rng(1).normal(size=(3, 3, 4, 4)).astype(np.float32)
    d = stamp_digests(stamps[[0, 1, 0, 2, 1, 0]])
    copies = np.array([0, 0, 0, 0, 0, 1], np.uint8)
    rows = _rows(6, d, copies, np.array([5, 1, 2, 3, 9, 5]))
    kept, dups = dedup_and_order(rows)
    assert dups == 2  # order 5 (dup of order 2) and order 9 (dup of order 1), both copy 0
    assert sorted(kept["order"].tolist()) == [1, 2, 3, 5]
    assert (np.diff(kept["hkey"].astype(np.float64)) >= 0).all()  # shuffled = sorted by hkey
    again, _ = dedup_and_order(rows[::-1].copy())
    assert again.tobytes() == kept.tobytes()  # independent of arrival order


def test_parts_spill_by_bucket_and_read_back(tmp_path):
    stamps = np.random.default_rng(2).normal(size=(50, 3, 2, 2)).astype(np.float32)
    rows = _rows(50, stamp_digests(stamps), np.zeros(50, np.uint8), np.arange(50))
    with open_part(tmp_path / "p1-00000", num_buckets=4, spill_rows=16) as writer:
        for chunk in np.array_split(rows, 5):
            writer.add(chunk)
    writer.write_record(tmp_path / "p1-00000", {"fingerprint": "x"})
    rec = load_part_record(tmp_path / "p1-00000")
    assert rec["rows_spilled"] == 50 and len(rec["runs"]) > 1
    got = [read_bucket([(tmp_path / "p1-00000", rec)], b, rows.dtype) for b in range(4)]
    assert sum(len(g) for g in got) == 50
    for b, g in enumerate(got):
        assert (g["hkey"] % 4 == b).all()
    assert sorted(np.concatenate(got)["order"].tolist()) == list(range(50))


def test_hard_negative_copies_get_independent_buckets():
    d = stamp_digests(np.zeros((1, 3, 2, 2), np.float32))
    keys = shuffle_keys(np.repeat(d, 8), np.arange(8, dtype=np.uint8), seed=0)
    assert len(set((keys % 16).tolist())) > 3


@pytest.mark.parametrize(
    "n,world,batch,drop", [(100, 3, 8, True), (100, 3, 8, False), (7, 4, 2, False)]
)
def test_rank_spans_partition_the_epoch(n, world, batch, drop):
    spans = [rank_span(n, world, r, batch, drop) for r in range(world)]
    assert len({s[2] for s in spans}) == 1
    covered = [p for s in spans for p in range(s[0], s[1])]
    assert covered == list(range(len(covered)))
    assert len(covered) == (n // (world * batch) * world * batch if drop else n)
    assert all(s[1] - s[0] <= s[2] * batch for s in spans)


def test_epoch_plan_is_a_permutation_of_all_samples():
    counts = np.array([16, 16, 5, 16, 9, 16])
    plan = EpochPlan(counts, seed=1, epoch=0, shuffle=True, shuffle_records=2)
    rec, off = plan.locate(0, int(counts.sum()))
    pairs = set(zip(rec.tolist(), off.tolist(), strict=False))
    assert len(pairs) == counts.sum() and all(o < counts[r] for r, o in pairs)
    r2, o2 = plan.locate(10, 40)
    assert (r2 == rec[10:40]).all() and (o2 == off[10:40]).all()
    other = EpochPlan(counts, seed=1, epoch=1, shuffle=True, shuffle_records=2).locate(0, 78)
    assert not np.array_equal(other[0], rec)
