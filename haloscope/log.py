"""One logging setup for every verb: console handler on the main rank only."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]

_FORMAT = "[haloscope] %(asctime)s rank{rank} %(levelname)s %(message)s"


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Attach a console handler to the ``haloscope`` logger (main rank only).

    Args:
        rank: process rank; ranks other than 0 only log warnings and errors.
        level: log level on rank 0.
    """
    logger = logging.getLogger("haloscope")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank), datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level if rank == 0 else logging.WARNING)
    logger.propagate = False
