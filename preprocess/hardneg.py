"""Hard-negative lookup: loading the seed's lookup parquet and matching controls against it.

The lookup holds sky positions of controls that a previous model scored high, as
``ra_key, dec_key`` (degrees rounded to 6 decimals, the seed's ``hard_neg_lookup.parquet``)
or plain ``ra, dec``. A row matches when its ``(round(ra, 6), round(dec, 6))`` is in the
lookup; positions are compared as integers of micro-degrees, so float formatting never
matters. Only controls (label 0) may be hard negatives. A missing, unreadable or empty lookup
is an error, never a silent no-op.

:func:`position_keys` is the one definition of a lookup key: ``haloscope mine`` de-duplicates
by it and writes its ``ra_key, dec_key`` columns with :func:`key_columns`, and the converter
matches rows by it, so a position written by one is always found by the other.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.errors import DataError

__all__ = [
    "HardNegLookup",
    "load_lookup",
    "position_keys",
    "key_columns",
    "KEY_DECIMALS",
]

log = logging.getLogger(__name__)
KEY_DECIMALS = 6
_SCALE = 10**KEY_DECIMALS
_DEC_BITS = 28  # dec_i < 2^28 (<= 180e6 + 1); ra_i <= 360e6 < 2^29
_DEC_OFFSET = 90 * _SCALE + 1


def position_keys(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """One int64 key per position: micro-degree ra and dec (rounded) packed together.

    Distinct for distinct rounded positions with |dec| <= 90 and |ra| < 34,000 degrees (any
    sky position, also ra outside [0, 360)). Non-finite positions get key -1, which no lookup
    entry can have.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    ok = np.isfinite(ra) & np.isfinite(dec)
    ra_i = np.rint(np.where(ok, ra, 0.0) * _SCALE).astype(np.int64)
    dec_i = np.rint(np.where(ok, dec, 0.0) * _SCALE).astype(np.int64) + _DEC_OFFSET
    keys = (ra_i << _DEC_BITS) | dec_i
    return np.where(ok, keys, -1)


def key_columns(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lookup's ``ra_key, dec_key`` columns of position keys: degrees rounded to 6 decimals.

    The values equal ``np.round(ra, 6), np.round(dec, 6)`` of the positions the keys were
    made from, and ``position_keys(*key_columns(keys)) == keys``.

    Args:
        keys: (K,) int64 keys of :func:`position_keys`.

    Returns:
        ``(ra_key, dec_key)`` float64 arrays.

    Raises:
        ValueError: a key of a non-finite position (-1).
    """
    keys = np.asarray(keys, dtype=np.int64)
    if (keys == -1).any():
        raise ValueError("key_columns: key -1 stands for a non-finite position, not a place")
    ra_i = keys >> _DEC_BITS
    dec_i = (keys & ((1 << _DEC_BITS) - 1)) - _DEC_OFFSET
    return ra_i / _SCALE, dec_i / _SCALE


@dataclass(frozen=True)
class HardNegLookup:
    """A loaded lookup: sorted unique position keys plus provenance for the manifest."""

    path: str
    sha256: str
    keys: np.ndarray
    """(K,) sorted unique int64 position keys."""
    num_rows: int
    columns: tuple[str, str]

    def match(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Boolean (N,) mask of positions in the lookup (callers restrict it to controls)."""
        return np.isin(position_keys(ra, dec), self.keys, assume_unique=False)

    def provenance(self) -> dict:
        """What the shard manifest records about the lookup."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "num_rows": self.num_rows,
            "num_positions": int(len(self.keys)),
            "columns": list(self.columns),
        }


def _pick_columns(path: Path, names: list[str]) -> tuple[str, str]:
    for pair in (("ra_key", "dec_key"), ("ra", "dec")):
        if all(c in names for c in pair):
            return pair
    raise DataError(
        f"{path}: hard-negative lookup needs columns ra_key, dec_key (or ra, dec); "
        f"found {', '.join(names) or 'none'}"
    )


def load_lookup(path: str | Path) -> HardNegLookup:
    """Read a hard-negative lookup parquet.

    Args:
        path: the lookup file (``haloscope mine`` output or the seed's lookup).

    Raises:
        DataError: the file is missing or unreadable, lacks position columns, is empty, or
            holds non-finite positions; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: hard-negative lookup not found (--hard-neg-path)")
    try:
        names = pq.read_schema(path).names
        cols = _pick_columns(path, names)
        table = pq.read_table(path, columns=list(cols))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: unreadable hard-negative lookup ({exc})") from None
    if table.num_rows == 0:
        raise DataError(
            f"{path}: hard-negative lookup is empty; pass a lookup with rows or "
            "drop --hard-neg-path"
        )
    ra = table.column(cols[0]).cast(pa.float64()).fill_null(np.nan).to_numpy()
    dec = table.column(cols[1]).cast(pa.float64()).fill_null(np.nan).to_numpy()
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise DataError(
            f"{path}: {int(bad.sum())} lookup rows have a missing or non-finite {cols[0]}/{cols[1]}"
        )
    if (np.abs(dec) > 90).any() or (ra < 0).any() or (ra >= 360 + 1e-6).any():
        raise DataError(
            f"{path}: lookup positions outside 0 <= ra < 360, |dec| <= 90 "
            "(are the columns degrees?)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    keys = np.unique(position_keys(ra, dec))
    log.info("hard-negative lookup %s: %d rows, %d positions", path, table.num_rows, len(keys))
    return HardNegLookup(
        path=str(path), sha256=digest, keys=keys, num_rows=table.num_rows, columns=cols
    )
