"""Zero-copy indexing of a packed-record shard: walk the tar headers, view the ``.npy`` data.

The shard is memory-mapped; each record's three arrays are ``np.frombuffer`` views into the
map, so opening a shard costs a few microseconds per record and reading a sample touches only
its own pages. Structure is checked against the manifest on every open (member names, tar
header checksums, dtypes, shapes, samples per record); a mismatch or a truncated file raises
``DataError`` naming the shard.
"""

from __future__ import annotations

import ast
import io
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haloscope.errors import DataError
from haloscope.shards.schema import (
    IMAGE_DTYPE,
    IMAGE_MEMBER,
    META_MEMBER,
    STAMP_PX,
    TABLE_DTYPE,
    TABLE_MEMBER,
)
from haloscope.shards.write import record_key

__all__ = [
    "RecordView",
    "open_shard",
    "index_shard_bytes",
    "record_spans",
    "walk_record_spans",
    "index_record_bytes",
]

_BLOCK = 512
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


@dataclass(frozen=True)
class RecordView:
    """Arrays of one packed record, viewing the shard's bytes (read-only)."""

    image: np.ndarray
    """(n, 3, 64, 64) float16."""
    meta: np.ndarray
    """(n, M) float32."""
    table: np.ndarray
    """(n,) TABLE_DTYPE."""


def _header_fields(buf: memoryview | bytes, pos: int, path: Path) -> tuple[str, int]:
    hdr = bytes(buf[pos : pos + _BLOCK])
    try:
        stored = int(hdr[148:156].strip(b"\0 ") or b"0", 8)
        size = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise DataError(f"{path}: corrupt tar header at byte {pos}") from None
    if stored != sum(hdr[:148]) + 256 + sum(hdr[156:]):
        raise DataError(f"{path}: corrupt tar header at byte {pos} (checksum mismatch)")
    name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    return name, size


def _npy_view(buf, offset: int, size: int, name: str, path: Path) -> np.ndarray:
    head = bytes(buf[offset : offset + min(size, 10)])
    if len(head) < 10 or head[:6] != b"\x93NUMPY" or head[6] != 1:
        raise DataError(f"{path}: member {name} is not a .npy (v1) array")
    hlen = int.from_bytes(head[8:10], "little")
    header = bytes(buf[offset + 10 : offset + 10 + min(hlen, max(size - 10, 0))])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        try:
            d = ast.literal_eval(header.decode("latin1"))
            parsed = (np.dtype(d["descr"]), tuple(d["shape"]))
        except (ValueError, SyntaxError, KeyError, TypeError):
            raise DataError(f"{path}: member {name} has a corrupt .npy header") from None
        if d.get("fortran_order"):
            raise DataError(f"{path}: member {name} is Fortran-ordered")
        _NPY_HEADERS[header] = parsed
    dtype, shape = parsed
    count = int(np.prod(shape))
    if 10 + hlen + count * dtype.itemsize != size:
        raise DataError(f"{path}: member {name} size disagrees with its .npy header")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset + 10 + hlen).reshape(shape)


def _check_record(path: Path, r: int, arrays: dict[str, np.ndarray], num_meta: int) -> None:
    image, meta, table = arrays[IMAGE_MEMBER], arrays[META_MEMBER], arrays[TABLE_MEMBER]
    n = len(table)
    if table.dtype != TABLE_DTYPE:
        raise DataError(f"{path}: record {r} table dtype differs from this haloscope's schema")
    if image.dtype != IMAGE_DTYPE or image.shape != (n, 3, STAMP_PX, STAMP_PX):
        raise DataError(
            f"{path}: record {r} image is {image.shape} {image.dtype}, "
            f"expected ({n}, 3, {STAMP_PX}, {STAMP_PX}) {IMAGE_DTYPE}"
        )
    if meta.dtype != np.float32 or meta.shape != (n, num_meta):
        raise DataError(
            f"{path}: record {r} meta is {meta.shape} {meta.dtype}, "
            f"expected ({n}, {num_meta}) float32 (manifest meta columns)"
        )


def index_shard_bytes(buf, path: Path, records: list[int], num_meta: int) -> list[RecordView]:
    """Index a shard held in ``buf`` (bytes, memoryview or mmap).

    Args:
        buf: the shard's bytes.
        path: the shard's path, for messages.
        records: samples per record expected by the manifest.
        num_meta: meta columns expected by the manifest.

    Raises:
        DataError: corrupt or truncated tar, unexpected member, or counts that disagree with
            the manifest.
    """
    size = len(buf)
    members: dict[str, np.ndarray] = {}
    pos = 0
    while pos + _BLOCK <= size and any(buf[pos : pos + _BLOCK]):
        name, nbytes = _header_fields(buf, pos, path)
        data = pos + _BLOCK
        if data + nbytes > size:
            raise DataError(
                f"{path}: truncated shard (member {name} needs {nbytes} bytes "
                f"at {data}, file has {size})"
            )
        members[name] = _npy_view(buf, data, nbytes, name, path)
        pos = data + -(-nbytes // _BLOCK) * _BLOCK
    if pos + _BLOCK > size and len(members) < 3 * len(records):
        raise DataError(
            f"{path}: truncated shard (ends at byte {size} after "
            f"{len(members)} members, expected {3 * len(records)})"
        )
    if len(members) != 3 * len(records):
        raise DataError(
            f"{path}: {len(members)} members but the manifest lists "
            f"{len(records)} records ({3 * len(records)} members)"
        )
    views = []
    for r, expected in enumerate(records):
        key = record_key(r)
        try:
            arrays = {m: members[f"{key}.{m}"] for m in (IMAGE_MEMBER, META_MEMBER, TABLE_MEMBER)}
        except KeyError as exc:
            raise DataError(f"{path}: missing member {exc.args[0]}") from None
        _check_record(path, r, arrays, num_meta)
        if len(arrays[TABLE_MEMBER]) != expected:
            raise DataError(
                f"{path}: record {r} holds {len(arrays[TABLE_MEMBER])} samples, "
                f"the manifest says {expected}"
            )
        views.append(RecordView(arrays[IMAGE_MEMBER], arrays[META_MEMBER], arrays[TABLE_MEMBER]))
    return views


def open_shard(path: Path, records: list[int], num_meta: int) -> list[RecordView]:
    """Memory-map and index one shard (see ``index_shard_bytes``)."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                raise DataError(f"{path}: empty shard file")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise DataError(f"{path}: shard listed in the manifest is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read shard ({exc})") from None
    return index_shard_bytes(mm, Path(path), records, num_meta)


# ---------------------------------------------------------------- one record at a time
def _npy_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Size of the ``.npy`` (v1) member ``shards/write.py:encode_npy`` writes for an array."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    return len(buf.getvalue()) + int(np.prod(shape)) * dtype.itemsize


def _member_bytes(data: int) -> int:
    return _BLOCK + -(-data // _BLOCK) * _BLOCK


def record_spans(records: list[int], num_meta: int) -> list[tuple[int, int]]:
    """Byte spans ``[start, stop)`` of each record in a shard as ``shards/write.py`` lays it
    out (three members per record, sorted), predicted from the manifest alone.

    The prediction is checked when a record is read (:func:`index_record_bytes`); a shard
    laid out otherwise (another numpy's ``.npy`` header padding) is walked instead
    (:func:`walk_record_spans`).
    """
    spans, pos = [], 0
    for n in records:
        size = sum(
            _member_bytes(_npy_bytes(dt, shape))
            for dt, shape in (
                (IMAGE_DTYPE, (n, 3, STAMP_PX, STAMP_PX)),
                (np.dtype(np.float32), (n, num_meta)),
                (TABLE_DTYPE, (n,)),
            )
        )
        spans.append((pos, pos + size))
        pos += size
    return spans


def walk_record_spans(
    read: Callable[[int, int], bytes], size: int, path: str, num_records: int
) -> list[tuple[int, int]]:
    """Byte spans of each record found by reading the shard's tar headers one by one
    (``read(start, stop)`` returns those bytes).

    Raises:
        DataError: a corrupt header, or members that are not three per record in order.
    """
    members: list[tuple[str, int, int]] = []
    pos = 0
    while pos + _BLOCK <= size and len(members) < 3 * num_records:
        hdr = read(pos, pos + _BLOCK)
        if not any(hdr):
            break
        name, nbytes = _header_fields(hdr, 0, Path(path))
        members.append((name, pos, pos + _member_bytes(nbytes)))
        pos = members[-1][2]
    spans = []
    for r in range(num_records):
        group = members[3 * r : 3 * r + 3]
        names = [m[0] for m in group]
        want = [f"{record_key(r)}.{m}" for m in (IMAGE_MEMBER, META_MEMBER, TABLE_MEMBER)]
        if names != want:
            raise DataError(f"{path}: record {r} members are {names}, expected {want}")
        spans.append((group[0][1], group[-1][2]))
    return spans


def index_record_bytes(buf: bytes, path: str, r: int, expected: int, num_meta: int) -> RecordView:
    """Index the bytes of record ``r`` of a shard (its three tar members, headers included).

    Raises:
        DataError: a corrupt header, unexpected member, dtype, shape or sample count.
    """
    arrays, pos = {}, 0
    key = record_key(r)
    for member in (IMAGE_MEMBER, META_MEMBER, TABLE_MEMBER):
        if pos + _BLOCK > len(buf):
            raise DataError(f"{path}: record {r} is truncated ({len(buf)} bytes)")
        name, nbytes = _header_fields(buf, pos, Path(path))
        if name != f"{key}.{member}":
            raise DataError(f"{path}: record {r} holds member {name}, expected {key}.{member}")
        if pos + _BLOCK + nbytes > len(buf):
            raise DataError(f"{path}: record {r} is truncated (member {name})")
        arrays[member] = _npy_view(buf, pos + _BLOCK, nbytes, name, Path(path))
        pos += _member_bytes(nbytes)
    _check_record(Path(path), r, arrays, num_meta)
    if len(arrays[TABLE_MEMBER]) != expected:
        raise DataError(
            f"{path}: record {r} holds {len(arrays[TABLE_MEMBER])} samples, "
            f"the manifest says {expected}"
        )
    return RecordView(arrays[IMAGE_MEMBER], arrays[META_MEMBER], arrays[TABLE_MEMBER])
