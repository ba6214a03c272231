"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run the test under umask 0o022 (files 0o644, folders 0o755), then restore the old one."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
