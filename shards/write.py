"""Deterministic writing of packed-record WebDataset tar shards.

A shard is a POSIX (ustar) tar file whose members are sorted by name and carry fixed
metadata (mtime 0, uid/gid 0, mode 0644, empty user/group names), so the same samples always
give the same bytes and the same sha256. Every record (one webdataset key ``rNNNNNN``) holds
up to ``record_samples`` samples as three ``.npy`` members (``shards/schema.py``).
Files are written through ``haloscope.atomic`` (a temporary sibling renamed into place).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from haloscope.atomic import atomic_write_bytes
from haloscope.shards.schema import (
    IMAGE_DTYPE,
    IMAGE_MEMBER,
    META_MEMBER,
    RECORD_SAMPLES,
    TABLE_DTYPE,
    TABLE_MEMBER,
)

__all__ = [
    "ShardInfo",
    "encode_npy",
    "record_key",
    "tar_bytes",
    "write_shard",
    "sha256_file",
]

_MEMBERS = (IMAGE_MEMBER, META_MEMBER, TABLE_MEMBER)  # already in sorted order


@dataclass
class ShardInfo:
    """What the manifest records about one written shard."""

    file: str
    """File name relative to the split directory."""
    num_samples: int
    records: list[int] = field(default_factory=list)
    """Samples per record, in file order."""
    bytes: int = 0
    sha256: str = ""
    num_by_label: dict[str, int] = field(default_factory=dict)
    """``{"0": controls, "1": lenses}``."""
    num_hard_neg: int = 0
    """Samples flagged hard negative (every copy counts)."""
    num_hard_neg_rows: int = 0
    """Distinct hard-negative rows (their copy 0)."""

    def to_json(self) -> dict:
        """The manifest entry."""
        return {
            "file": self.file,
            "num_samples": self.num_samples,
            "records": self.records,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "num_by_label": self.num_by_label,
            "num_hard_neg": self.num_hard_neg,
            "num_hard_neg_rows": self.num_hard_neg_rows,
        }


def record_key(index: int) -> str:
    """Webdataset key of the ``index``-th record of a shard (sorts in file order)."""
    return f"r{index:06d}"


def encode_npy(array: np.ndarray) -> bytes:
    """``.npy`` bytes of a C-contiguous array (format 1.0, no pickle)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _check_arrays(image: np.ndarray, meta: np.ndarray, table: np.ndarray) -> int:
    n = len(table)
    if image.dtype != IMAGE_DTYPE or image.ndim != 4 or len(image) != n:
        raise ValueError(f"image must be (N,3,H,W) {IMAGE_DTYPE}, got {image.shape} {image.dtype}")
    if meta.dtype != np.float32 or meta.ndim != 2 or len(meta) != n:
        raise ValueError(f"meta must be (N,M) float32, got {meta.shape} {meta.dtype}")
    if table.dtype != TABLE_DTYPE:
        raise ValueError(f"table must have TABLE_DTYPE, got {table.dtype}")
    return n


def iter_records(
    image: np.ndarray, meta: np.ndarray, table: np.ndarray, record_samples: int = RECORD_SAMPLES
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` of the records of one shard, in sorted order."""
    n = _check_arrays(image, meta, table)
    for r, start in enumerate(range(0, n, record_samples)):
        stop = min(n, start + record_samples)
        key = record_key(r)
        for member, arr in zip(
            _MEMBERS, (image[start:stop], meta[start:stop], table[start:stop]), strict=False
        ):
            yield f"{key}.{member}", encode_npy(arr)


def tar_bytes(
    image: np.ndarray, meta: np.ndarray, table: np.ndarray, record_samples: int = RECORD_SAMPLES
) -> bytes:
    """The deterministic tar bytes of one shard (see the module docstring)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in iter_records(image, meta, table, record_samples):
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(
    path: Path,
    image: np.ndarray,
    meta: np.ndarray,
    table: np.ndarray,
    record_samples: int = RECORD_SAMPLES,
) -> ShardInfo:
    """Write one shard atomically and describe it.

    Args:
        path: destination ``.tar`` file.
        image: (N, 3, 64, 64) float16 normalised stamps.
        meta: (N, M) float32 raw meta values.
        table: (N,) ``TABLE_DTYPE`` rows.
        record_samples: samples per packed record (the last one may be shorter).

    Returns:
        The manifest entry of the shard.
    """
    data = tar_bytes(image, meta, table, record_samples)
    atomic_write_bytes(path, data)
    n = len(table)
    labels = table["label"]
    return ShardInfo(
        file=Path(path).name,
        num_samples=n,
        records=[min(record_samples, n - s) for s in range(0, n, record_samples)],
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        num_by_label={"0": int((labels == 0).sum()), "1": int((labels == 1).sum())},
        num_hard_neg=int(table["hard_neg"].sum()),
        num_hard_neg_rows=int(((table["hard_neg"] == 1) & (table["copy"] == 0)).sum()),
    )
