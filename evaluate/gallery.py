"""Stamps for the report: read rows of a ``stamps.zarr`` store by ``task_id``.

Assumed layout (written by the shard converter for val/test, ``SHARDS/<split>/stamps.zarr``):
a zarr v3 group with

- ``stamps``: (N, 3, 64, 64) float16, bands g, r, z, already ``outer``-normalised;
- ``task_id``: (N,) strings, row ``i`` of ``stamps`` belongs to ``task_id[i]``.

This module is the single adapter to that layout, so a change there is one edit here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from haloscope.errors import DataError

__all__ = ["StampStore", "load_gallery_stamps", "open_stamp_store"]

logger = logging.getLogger(__name__)


class StampStore:
    """An opened stamps store with a ``task_id -> row`` index.

    Args:
        path: the zarr group folder.
    """

    def __init__(self, path: str | Path) -> None:
        import zarr  # heavy import, only when stamps are used

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"--stamps {self.path}: no such zarr store")
        try:
            group = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several unrelated types for a bad store
            raise DataError(f"--stamps {self.path}: cannot open as a zarr group ({exc})") from exc
        keys = set(group.array_keys())
        for name in ("stamps", "task_id"):
            if name not in keys:
                raise DataError(
                    f"--stamps {self.path}: missing array '{name}' (has {sorted(keys)})"
                )
        self.stamps = group["stamps"]
        if len(self.stamps.shape) != 4 or self.stamps.shape[1] != 3:
            raise DataError(
                f"--stamps {self.path}: 'stamps' must be (N, 3, H, W), got {self.stamps.shape}"
            )
        try:
            raw = np.asarray(group["task_id"][:]).tolist()  # StringDType, bytes or object
        except Exception as exc:  # a corrupt chunk fails in the codec, with its own type
            raise DataError(f"--stamps {self.path}: cannot read 'task_id' ({exc})") from exc
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        if len(ids) != self.stamps.shape[0]:
            raise DataError(
                f"--stamps {self.path}: 'task_id' has {len(ids)} rows, "
                f"'stamps' has {self.stamps.shape[0]}"
            )
        self.index = {tid: i for i, tid in enumerate(ids)}

    def rows_for(self, task_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Store rows of the task_ids that exist, and a found-mask over ``task_ids``."""
        rows = np.array([self.index.get(str(t), -1) for t in task_ids], dtype=np.int64)
        return rows[rows >= 0], rows >= 0

    def read(self, rows: np.ndarray, half_width: int | None = None) -> np.ndarray:
        """Stamps of store ``rows`` as float32 (len(rows), 3, H, W), in the given order.

        Args:
            rows: store rows.
            half_width: if given, only the central (2*half_width)^2 pixels are returned.

        Raises:
            DataError: the chunks cannot be read or decoded (named).
        """
        h, w = self.stamps.shape[2:]
        ys, xs = slice(None), slice(None)
        if half_width is not None:
            ys = slice(h // 2 - half_width, h // 2 + half_width)
            xs = slice(w // 2 - half_width, w // 2 + half_width)
        if rows.size == 0:
            return np.zeros(
                (0, 3, h, w) if half_width is None else (0, 3, 2 * half_width, 2 * half_width),
                np.float32,
            )
        unique, inverse = np.unique(rows, return_inverse=True)  # zarr wants sorted, unique rows
        try:
            data = self.stamps.get_orthogonal_selection((unique, slice(None), ys, xs))
        except Exception as exc:  # a corrupt chunk fails in the codec, with its own type
            raise DataError(f"--stamps {self.path}: cannot read 'stamps' ({exc})") from exc
        return np.asarray(data, dtype=np.float32)[inverse]


def open_stamp_store(path: str | Path) -> StampStore:
    """Open a stamps store (see the module docstring for the layout).

    Raises:
        DataError: missing store, missing arrays, or inconsistent shapes.
    """
    return StampStore(path)


def load_gallery_stamps(zarr_path: str | Path, task_ids: Sequence[str]) -> np.ndarray:
    """Stamps for ``task_ids``, in that order.

    Args:
        zarr_path: ``stamps.zarr`` group.
        task_ids: ids to read.

    Returns:
        float32 (len(task_ids), 3, 64, 64), bands g, r, z.

    Raises:
        DataError: the store is unusable or some task_ids are not in it (named).
    """
    store = open_stamp_store(zarr_path)
    rows, found = store.rows_for(task_ids)
    if not found.all():
        missing = [str(t) for t, ok in zip(task_ids, found, strict=True) if not ok]
        raise DataError(
            f"--stamps {zarr_path}: {len(missing)} task_id(s) not in the store, "
            f"e.g. {missing[:3]}; is it the store of the scored split?"
        )
    return store.read(rows)
