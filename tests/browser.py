"""The headless browser of the page tests (eval report, candidate gallery)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest


def playwright_and_chromium() -> tuple[Any, str]:
    """``(sync_playwright, chromium path)``, or a skip saying which of the two is missing."""
    # NOTE: playwright is an optional test dependency: imported here so a missing one skips.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable on PATH")
    return sync_playwright, chromium
