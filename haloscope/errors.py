"""User-facing errors: the CLI prints these as one clear line, never as a traceback."""

from __future__ import annotations

__all__ = [
    "HaloscopeError",
    "ContractError",
    "ConfigError",
    "DataError",
    "MissingDataError",
    "CheckpointError",
    "OutputBusyError",
]


class HaloscopeError(Exception):
    """Base of every error caused by the user's input rather than by a bug.

    The message must name the offending file, column, flag or value and, where possible,
    say how to fix it.
    """


class ContractError(HaloscopeError, ValueError):
    """Input parquet does not follow the data contract (layout, columns, types)."""


class ConfigError(HaloscopeError, ValueError):
    """A flag, config file or config combination is invalid."""


class DataError(HaloscopeError, ValueError):
    """Data on disk is unusable: corrupt shard, manifest mismatch, empty lookup, ..."""


class MissingDataError(DataError):
    """The data asked for does not exist (a manifest, a shard or a file at a URL or path):
    callers that may try another place catch this rather than reading the message."""


class CheckpointError(HaloscopeError, ValueError):
    """A checkpoint is missing, corrupt or does not match the data it is used with."""


class OutputBusyError(HaloscopeError):
    """Another process is writing the same output folder (``shards/lock.py``)."""
