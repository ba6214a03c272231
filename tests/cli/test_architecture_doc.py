"""docs/architecture.md says what the tree does: its import exceptions are the test's, and
every contract owner it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.cli.test_import_direction import EXCEPTIONS, STAGES

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _rows(section: str) -> list[list[str]]:
    """The body rows of the Markdown tables in ``section``, as lists of cells."""
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= {"-"}:
            rows.append(cells)
    return rows


def _owners() -> list[str]:
    """The first dotted ``haloscope.*`` name of each owner cell."""
    names = []
    for row in _rows(_section("Who owns each contract"))[1:]:  # [0] is the header
        found = re.search(r"`(haloscope(?:\.\w+)+)`", row[1])
        assert found, f"owner without a haloscope.* name: {row}"
        names.append(found.group(1))
    return names


def test_the_documented_exceptions_are_the_tests():
    rows = _rows(_section("Data flow, one direction"))[1:]
    documented = {(row[0].strip("`"), row[1].strip("`")) for row in rows}
    assert documented == set(EXCEPTIONS)


def test_the_documented_stage_order_is_the_tests():
    text = _section("Data flow, one direction")
    assert "`" + " -> ".join(STAGES[1:]) + "`" in text
    assert f"`{STAGES[0]}` (the format library) imports no stage" in text


@pytest.mark.parametrize("name", _owners())
def test_every_contract_owner_exists(name):
    parts = name.split(".")
    for split in range(len(parts), 1, -1):  # longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{name}: no such module")
