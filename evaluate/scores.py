"""Reading and validating a scores table (``infer`` output, ``eval``/``mine`` input).

The layout is the "Scores table" of ``docs/architecture.md``. Evaluation needs a label and
``score``; everything else (``logit``, strata columns, ``task_id``, ``split``, ``model``) is
optional here and checked by the step that uses it.

The label comes from ``label`` (1 = lens), else ``y_true`` (the seed's evaluation column, the
same coding), else ``is_control`` (the seed's inference output: label = 1 - is_control);
:func:`resolve_labels` is the one place that decides, and every frame records which column
it used (``ScoresFrame.label_column``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.errors import ConfigError, DataError

__all__ = [
    "LABEL_COLUMNS",
    "RANK_BY",
    "ScoresFrame",
    "describe_label_column",
    "load_scores",
    "resolve_labels",
    "scores_from_table",
]

logger = logging.getLogger(__name__)

RANK_BY: tuple[str, ...] = ("auto", "logit", "score")
# in order of preference; is_control is inverted (1 = control)
LABEL_COLUMNS: tuple[str, ...] = ("label", "y_true", "is_control")


@dataclass
class ScoresFrame:
    """A validated scores table as numpy columns.

    Attributes:
        source: file name (or ``"<table>"``) for messages.
        columns: every column as a numpy array (strings as object arrays, nulls as NaN
            for floats and None for strings).
        labels: int8 (N,), 1 = lens.
        ranking: float64 (N,) the values that are ranked (``logit`` or ``score``).
        rank_by: ``"logit"`` or ``"score"``.
        label_column: the column ``labels`` came from (one of ``LABEL_COLUMNS``).
        metadata: the parquet schema metadata, decoded (``infer`` stores its provenance
            there, e.g. ``checkpoint``); empty for an in-memory table without any.
    """

    source: str
    columns: dict[str, np.ndarray]
    labels: np.ndarray
    ranking: np.ndarray
    rank_by: str
    label_column: str = "label"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Rows in the table."""
        return int(self.labels.size)

    def to_score(self, threshold: float) -> float:
        """A ranking-unit threshold expressed as a score (sigmoid of a logit threshold)."""
        if self.rank_by == "score" or not math.isfinite(threshold):
            return threshold
        return float(1.0 / (1.0 + math.exp(-threshold))) if threshold > -700 else 0.0


def _column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_null(column.type):  # all NULL (e.g. psf_fwhm_used_r of controls only)
        return np.full(len(column), np.nan)
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        if column.null_count and pa.types.is_integer(column.type):
            column = column.cast(pa.float64())
        return column.to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(column.type):
        return column.fill_null(False).to_numpy(zero_copy_only=False)
    return np.asarray(column.to_pylist(), dtype=object)


def _resolve_rank_by(table: pa.Table, rank_by: str, source: str) -> str:
    if rank_by not in RANK_BY:
        raise ConfigError(f"--rank-by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if rank_by == "auto":
        return "logit" if "logit" in table.column_names else "score"
    if rank_by not in table.column_names:
        raise DataError(f"{source}: --rank-by {rank_by} but the table has no column '{rank_by}'")
    return rank_by


def _check_numeric(table: pa.Table, name: str, source: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise DataError(f"{source}: column '{name}' must be numeric, got {column.type}")
    if column.null_count:
        raise DataError(f"{source}: column '{name}' has {column.null_count} null values")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(
            f"{source}: column '{name}' has {int(bad.sum())} NaN/inf values "
            f"(first at row {int(np.flatnonzero(bad)[0])})"
        )
    return values


def describe_label_column(column: str) -> str:
    """How labels were read from ``column``, for logs and reports."""
    return "label = 1 - is_control" if column == "is_control" else "1 = lens"


def resolve_labels(table: pa.Table, source: str = "<table>") -> tuple[np.ndarray, str]:
    """The 0/1 labels (1 = lens) of a scores table and the column they came from.

    The first of ``LABEL_COLUMNS`` present wins: ``label``, then ``y_true`` (both 1 = lens),
    then ``is_control`` (1 = control, inverted here), as the seed's evaluation did.

    Args:
        table: the scores table.
        source: name used in error messages.

    Returns:
        ``(labels int8 (N,), column name)``.

    Raises:
        DataError: none of the columns exists, or the one used holds nulls, NaN or values
            other than 0/1.
    """
    column = next((c for c in LABEL_COLUMNS if c in table.column_names), None)
    if column is None:
        raise DataError(
            f"{source}: missing column(s) 'label', 'y_true' or 'is_control' (one label column "
            f"is needed; has: {', '.join(table.column_names)})"
        )
    values = _check_numeric(table, column, source)
    if not np.isin(values, (0, 1)).all():
        bad = sorted(set(np.unique(values[~np.isin(values, (0, 1))]).tolist()))[:5]
        coding = "0 (lens) or 1 (control)" if column == "is_control" else "0 (control) or 1 (lens)"
        raise DataError(f"{source}: column '{column}' must be {coding}, found {bad}")
    labels = values.astype(np.int8)
    return (1 - labels if column == "is_control" else labels), column


def scores_from_table(
    table: pa.Table,
    source: str = "<table>",
    rank_by: str = "auto",
    require: Iterable[str] = (),
    need_both_classes: bool = True,
) -> ScoresFrame:
    """Validate an in-memory scores table.

    Args:
        table: the scores table.
        source: name used in error messages.
        rank_by: ``auto`` (``logit`` when present, else ``score``), ``logit`` or ``score``.
        require: extra columns that must be present.
        need_both_classes: raise when there are no positives or no controls.

    Returns:
        The validated :class:`ScoresFrame`.

    Raises:
        DataError: naming the source and column for missing columns, nulls, NaN scores,
            labels other than 0/1, or a missing class.
    """
    missing = [c for c in ("score", *require) if c not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(has: {', '.join(table.column_names)})"
        )
    if table.num_rows == 0:
        raise DataError(f"{source}: the scores table has no rows")
    labels, label_column = resolve_labels(table, source)
    _check_numeric(table, "score", source)
    rank_by = _resolve_rank_by(table, rank_by, source)
    ranking = _check_numeric(table, rank_by, source)
    num_pos = int(labels.sum())
    if need_both_classes and (num_pos == 0 or num_pos == labels.size):
        which = "positives (label == 1)" if num_pos == 0 else "controls (label == 0)"
        raise DataError(
            f"{source}: column '{label_column}' has no {which}; evaluation needs both classes"
        )
    columns = {name: _column_to_numpy(table.column(name)) for name in table.column_names}
    metadata = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in (table.schema.metadata or {}).items()
    }
    return ScoresFrame(source, columns, labels, ranking, rank_by, label_column, metadata)


def load_scores(
    path: str | Path,
    rank_by: str = "auto",
    require: Iterable[str] = (),
    need_both_classes: bool = True,
) -> ScoresFrame:
    """Read and validate a scores parquet file (or a directory of parquet parts).

    Args:
        path: parquet file or dataset directory.
        rank_by: see :func:`scores_from_table`.
        require: extra columns that must be present.
        need_both_classes: raise when there are no positives or no controls.

    Returns:
        The validated :class:`ScoresFrame`.

    Raises:
        DataError: the file is missing or unreadable, or the table is invalid.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"scores file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as parquet ({exc})") from exc
    frame = scores_from_table(table, str(path), rank_by, require, need_both_classes)
    logger.info(
        "%s: %d rows (%d lenses, %d controls), labels from column '%s' (%s), ranking by %s",
        path,
        frame.num_rows,
        int(frame.labels.sum()),
        int((frame.labels == 0).sum()),
        frame.label_column,
        describe_label_column(frame.label_column),
        frame.rank_by,
    )
    return frame
