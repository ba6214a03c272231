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

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from haloscope.shards.schema import IMAGE_DTYPE, STAMP_PX, TABLE_DTYPE
from haloscope.shards.write import atomic_write_bytes

__all__ = [
    "row_dtype",
    "stamp_digests",
    "shuffle_keys",
    "PartWriter",
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
    """Spills rows of one producer into ``<stem>.dat``; ``close`` writes ``<stem>.json`` last.

    Args:
        stem: path without suffix, e.g. ``_work/train/p1-00003``.
        num_buckets: buckets of the split.
        spill_rows: rows buffered before a sorted run is appended (bounds memory).
    """

    def __init__(self, stem: Path, num_buckets: int, spill_rows: int = 4096) -> None:
        self.stem, self.num_buckets, self.spill_rows = Path(stem), num_buckets, spill_rows
        self._tmp = self.stem.with_name(f".{self.stem.name}.dat.tmp{os.getpid()}")
        self._fh = open(self._tmp, "wb")
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._rows = 0
        self.runs: list[list[int]] = []
        """Per run: row offsets of bucket starts (num_buckets + 1 entries, absolute)."""

    def add(self, rows: np.ndarray) -> None:
        """Buffer rows; spill a sorted run when the buffer is full."""
        if len(rows):
            self._buf.append(rows)
            self._buffered += len(rows)
        if self._buffered >= self.spill_rows:
            self._spill()

    def _spill(self) -> None:
        if not self._buffered:
            return
        rows = np.concatenate(self._buf)
        self._buf, self._buffered = [], 0
        bucket = rows["hkey"] % np.uint64(self.num_buckets)
        order = np.argsort(bucket, kind="stable")
        rows[order].tofile(self._fh)
        counts = np.bincount(bucket.astype(np.int64), minlength=self.num_buckets)
        self.runs.append((self._rows + np.concatenate([[0], np.cumsum(counts)])).tolist())
        self._rows += len(rows)

    def close(self, record: dict) -> None:
        """Flush, rename the data file into place, then write the JSON record atomically."""
        self._spill()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.stem.with_suffix(".dat"))
        doc = {**record, "rows_spilled": self._rows, "runs": self.runs}
        atomic_write_bytes(self.stem.with_suffix(".json"), json.dumps(doc).encode())

    def abort(self) -> None:
        """Drop the temporary data file."""
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


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
