"""Streaming reads of the contract's parquet files, one record batch at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.errors import ContractError
from haloscope.preprocess.schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

__all__ = ["DEFAULT_BATCH_ROWS", "contract_columns", "iter_record_batches"]

DEFAULT_BATCH_ROWS = 2048


def contract_columns(path: Path, extra: Sequence[str] = ()) -> list[str]:
    """Columns to read from ``path``: the required ones, optional ones present, and ``extra``."""
    names = set(pq.read_schema(path).names)
    missing = [c for c in extra if c not in names]
    if missing:
        raise ContractError(f"{path}: missing requested column(s) {', '.join(missing)}")
    cols = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in names]
    return cols + [c for c in extra if c not in cols]


def iter_record_batches(
    files: Sequence[Path],
    columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    extra: Sequence[str] = (),
) -> Iterator[tuple[Path, pa.RecordBatch]]:
    """Yield ``(file, record batch)`` for each file in order, with bounded memory.

    Args:
        files: parquet files (one split).
        columns: columns to read; default: the contract's columns present plus ``extra``.
        batch_rows: rows per record batch.
        extra: additional columns (e.g. meta inputs) that must exist.

    Raises:
        ContractError: a file cannot be read or lacks a column.
    """
    for path in files:
        cols = list(columns) if columns is not None else contract_columns(path, extra)
        try:
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=batch_rows, columns=cols):
                yield path, batch
        except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
            raise ContractError(f"{path}: cannot read columns {cols}: {exc}") from None
