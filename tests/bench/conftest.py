"""Fixtures of the benchmark tests (the tiny shards of the trainer tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.train_fixtures import make_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 train / 64 val samples in 2 shards per split (shared read-only by tests)."""
    return make_shards(tmp_path_factory.mktemp("shards"))
