"""Two-pass global shuffle with bounded memory: spill keyed rows to buckets, then order each.

Pass 1 (any number of independent producers) appends rows of ``row_dtype(M)`` to a *part*:
a data file of runs, each run sorted by bucket (``hkey % num_buckets``) with its bucket
boundaries recorded, so pass 2 can read one bucket's rows from every part with one
``np.fromfile`` per run. Pass 2 loads one bucket (memory = bucket size, not input size),
drops rows whose ``(digest, copy)`` already appeared earlier in input ``order`` and sorts
the rest by ``(hkey, order)``. ``hkey`` is a keyed hash of ``(digest, copy)`` with the seed,
so the result is a seeded shuffle that does not depend on how producers were scheduled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from haloscope.atomic import atomic_open, atomic_write_text
from haloscope.shards.schema import IMAGE_DTYPE, STAMP_PX, TABLE_DTYPE

__all__ = [
    "row_dtype",
    "stamp_digests",
    "shuffle_keys",
    "PartWriter",
    "open_part",
    "read_bucket",
    "dedup_and_order",
    "load_part_record",
]


def row_dtype(num_meta: int) -> np.dtype:
    """One spilled sample: sort/dedup keys, input order, stamp, meta and table row."""
    return np.dtype(
        [
            ("hkey", "<u8"),  # seeded shuffle key; bucket = hkey % num_buckets
            ("digest", "V16"),  # blake2b-128 of the raw stamp bytes (dedup identity)
            ("copy", "u1"),
            ("order", "<i8"),  # (file index << 40) | row index: first occurrence wins
            ("image", IMAGE_DTYPE, (3, STAMP_PX, STAMP_PX)),
            ("meta", "<f4", (num_meta,)),
            ("table", TABLE_DTYPE),
        ]
    )


def stamp_digests(stamps: np.ndarray) -> np.ndarray:
    """(N,) ``V16`` blake2b-128 digests of each stamp's bytes (C order, its dtype)."""
    stamps = np.ascontiguousarray(stamps)
    out = np.empty(len(stamps), dtype="V16")
    for i in range(len(stamps)):
        out[i] = hashlib.blake2b(stamps[i].data, digest_size=16).digest()
    return out


def shuffle_keys(digests: np.ndarray, copies: np.ndarray, seed: int) -> np.ndarray:
    """(N,) uint64 keyed hash of ``(digest, copy)``; each copy gets its own key and bucket."""
    key = int(seed).to_bytes(8, "little", signed=True)
    out = np.empty(len(digests), dtype="<u8")
    for i, (d, c) in enumerate(zip(digests.tolist(), copies.tolist(), strict=False)):
        h = hashlib.blake2b(d + bytes([c]), digest_size=8, key=key).digest()
        out[i] = int.from_bytes(h, "little")
    return out


class PartWriter:
    """Spills rows of one producer into a part's data file as sorted runs (see ``open_part``).

    Args:
        fh: the open data file (a temporary sibling of ``<stem>.dat``).
        num_buckets: buckets of the split.
        spill_rows: rows buffered before a sorted run is appended (bounds memory).
    """

    def __init__(self, fh: BinaryIO, num_buckets: int, spill_rows: int = 4096) -> None:
        self._fh, self.num_buckets, self.spill_rows = fh, num_buckets, spill_rows
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self.rows = 0
        """Rows written so far."""
        self.runs: list[list[int]] = []
        """Per run: row offsets of bucket starts (num_buckets + 1 entries, absolute)."""

    def add(self, rows: np.ndarray) -> None:
        """Buffer rows; spill a sorted run when the buffer is full."""
        if len(rows):
            self._buf.append(rows)
            self._buffered += len(rows)
        if self._buffered >= self.spill_rows:
            self.spill()

    def spill(self) -> None:
        """Append the buffered rows as one run sorted by bucket."""
        if not self._buffered:
            return
        rows = np.concatenate(self._buf)
        self._buf, self._buffered = [], 0
        bucket = rows["hkey"] % np.uint64(self.num_buckets)
        order = np.argsort(bucket, kind="stable")
        # NOTE: write(), not ndarray.tofile: a failed write keeps its errno (ENOSPC, EFBIG)
        self._fh.write(rows[order].view(np.uint8))
        counts = np.bincount(bucket.astype(np.int64), minlength=self.num_buckets)
        self.runs.append((self.rows + np.concatenate([[0], np.cumsum(counts)])).tolist())
        self.rows += len(rows)

    def write_record(self, stem: Path, record: dict) -> dict:
        """Write ``<stem>.json`` (``record`` plus the run layout) atomically; call it last."""
        doc = {**record, "rows_spilled": self.rows, "runs": self.runs}
        atomic_write_text(Path(stem).with_suffix(".json"), json.dumps(doc))
        return doc


@contextlib.contextmanager
def open_part(stem: Path, num_buckets: int, spill_rows: int = 4096) -> Iterator[PartWriter]:
    """A ``PartWriter`` whose ``<stem>.dat`` appears only when the block exits cleanly.

    On an exception the temporary data file is removed and no record exists, so the part
    counts as unfinished. After the block, ``writer.write_record(stem, record)`` marks it done.
    """
    with atomic_open(Path(stem).with_suffix(".dat"), "wb") as fh:
        writer = PartWriter(fh, num_buckets, spill_rows)
        yield writer
        writer.spill()


def load_part_record(stem: Path) -> dict | None:
    """The JSON record of a finished part, or None if the part is unfinished."""
    path = Path(stem).with_suffix(".json")
    if not path.exists() or not Path(stem).with_suffix(".dat").exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def read_bucket(parts: list[tuple[Path, dict]], bucket: int, dtype: np.dtype) -> np.ndarray:
    """Rows of ``bucket`` from every part (``(stem, record)``), in part and run order."""
    pieces = []
    for stem, record in parts:
        with open(Path(stem).with_suffix(".dat"), "rb") as fh:
            for bounds in record["runs"]:
                lo, hi = bounds[bucket], bounds[bucket + 1]
                if hi > lo:
                    fh.seek(lo * dtype.itemsize)
                    pieces.append(np.fromfile(fh, dtype=dtype, count=hi - lo))
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)


def dedup_and_order(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Drop repeated ``(digest, copy)`` rows (keep the smallest ``order``), sort by hkey.

    Returns:
        The kept rows in shuffled order, and the number of dropped rows with ``copy == 0``
        (each a duplicate input row).
    """
    if not len(rows):
        return rows, 0
    digest = np.ascontiguousarray(rows["digest"]).view("<u8").reshape(len(rows), 2)
    idx = np.lexsort((rows["order"], rows["copy"], digest[:, 1], digest[:, 0]))
    d = digest[idx]
    c = rows["copy"][idx]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = (d[1:] != d[:-1]).any(axis=1) | (c[1:] != c[:-1])
    dropped = idx[~first]
    kept = idx[first]
    kept = kept[np.lexsort((rows["order"][kept], rows["hkey"][kept]))]
    return rows[kept], int((rows["copy"][dropped] == 0).sum())
