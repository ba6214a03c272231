"""Decoding of ``stamp_npz`` blobs into (N, 3, 64, 64) float32 g/r/z stamps.

The blobs are ``np.savez_compressed`` zips with members ``image_g.npy``, ``image_r.npy``,
``image_z.npy``. A fast path walks the zip's local headers and inflates each member with
zlib directly (no ``zipfile``/``np.load`` objects per row); anything unusual falls back to
``np.load``, so every valid npz decodes and every invalid one gets a reason code.
"""

from __future__ import annotations

import ast
import io
import struct
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "BANDS",
    "STAMP_PX",
    "DECODE_OK",
    "DECODE_UNDECODABLE",
    "DECODE_BAD_KEYS",
    "DECODE_BAD_SHAPE",
    "decode_stamp",
    "decode_stamps",
]

BANDS: tuple[str, ...] = ("g", "r", "z")
STAMP_PX = 64
DECODE_OK, DECODE_UNDECODABLE, DECODE_BAD_KEYS, DECODE_BAD_SHAPE = 0, 1, 2, 3

_KEYS = tuple(f"image_{b}" for b in BANDS)
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # zip local file header (30 bytes)
_HEADER_CACHE: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


class _Unusual(Exception):
    """The fast path met something it does not handle; use np.load instead."""


def _parse_npy(raw: bytes) -> np.ndarray:
    if raw[:6] != b"\x93NUMPY":
        raise ValueError("member is not a .npy array")
    major = raw[6]
    hlen_size = 2 if major == 1 else 4
    hlen = int.from_bytes(raw[8 : 8 + hlen_size], "little")
    start = 8 + hlen_size
    header = raw[start : start + hlen]
    parsed = _HEADER_CACHE.get(header)
    if parsed is None:
        d = ast.literal_eval(header.decode("latin1"))
        parsed = (np.dtype(d["descr"]), tuple(d["shape"]), bool(d["fortran_order"]))
        _HEADER_CACHE[header] = parsed
    dtype, shape, fortran = parsed
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=start + hlen)
    return arr.reshape(shape, order="F" if fortran else "C")


def _fast_members(blob: bytes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    pos = 0
    while blob[pos : pos + 4] == b"PK\x03\x04":
        (_, _, flags, method, _, _, _, csize, _, nlen, xlen) = _LOCAL.unpack_from(blob, pos)
        name = blob[pos + 30 : pos + 30 + nlen].decode("utf-8", "replace")
        data_start = pos + 30 + nlen + xlen
        if flags & 0x08:  # sizes in a trailing data descriptor: leave it to zipfile
            raise _Unusual
        if method == 8:
            inflater = zlib.decompressobj(-15)
            raw = inflater.decompress(blob[data_start:])
            if not inflater.eof:
                raise _Unusual
            end = len(blob) - len(inflater.unused_data)
        elif method == 0 and csize != 0xFFFFFFFF:
            raw = blob[data_start : data_start + csize]
            end = data_start + csize
        else:
            raise _Unusual
        out[name[:-4] if name.endswith(".npy") else name] = _parse_npy(raw)
        pos = end
    if not out:
        raise _Unusual
    return out


def _slow_members(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def decode_stamp(blob: bytes | None, out: np.ndarray) -> int:
    """Decode one npz blob into ``out`` (3, 64, 64) float32; return a DECODE_* code.

    Args:
        blob: the ``stamp_npz`` bytes (None counts as undecodable).
        out: destination, written only when the code is DECODE_OK.
    """
    if not blob:
        return DECODE_UNDECODABLE
    try:
        try:
            members = _fast_members(blob)
        except (_Unusual, struct.error, ValueError, SyntaxError, zlib.error):
            members = _slow_members(blob)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error):
        return DECODE_UNDECODABLE
    if any(k not in members for k in _KEYS):
        return DECODE_BAD_KEYS
    for band, key in enumerate(_KEYS):
        arr = members[key]
        if arr.shape != (STAMP_PX, STAMP_PX) or arr.dtype.kind != "f":
            return DECODE_BAD_SHAPE
        out[band] = arr
    return DECODE_OK


def decode_stamps(blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a batch of blobs.

    Args:
        blobs: ``stamp_npz`` values of one record batch (a list, or ``.to_pylist()``).

    Returns:
        ``stamps`` (N, 3, 64, 64) float32 in band order g, r, z (rows that failed are zero),
        and ``codes`` (N,) int8 DECODE_* per row.
    """
    n = len(blobs)
    stamps = np.zeros((n, len(BANDS), STAMP_PX, STAMP_PX), dtype=np.float32)
    codes = np.empty(n, dtype=np.int8)
    for i, blob in enumerate(blobs):
        codes[i] = decode_stamp(blob, stamps[i])
    return stamps, codes
