"""Zero-copy indexing of a packed-record shard: walk the tar headers, view the ``.npy`` data.

The shard is memory-mapped; each record's three arrays are ``np.frombuffer`` views into the
map, so opening a shard costs a few microseconds per record and reading a sample touches only
its own pages. Structure is checked against the manifest on every open (member names, tar
header checksums, dtypes, shapes, samples per record); a mismatch or a truncated file raises
``DataError`` naming the shard.
"""

from __future__ import annotations

import ast
import mmap
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

__all__ = ["RecordView", "open_shard", "index_shard_bytes"]

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
