"""Imports point one way: shards <- preprocess <- train <- infer <- evaluate (STYLE.md rule 3).

Every module of every stage package (nested packages included) is parsed with ``ast``; each
``haloscope.<package>`` import counts, at module level or inside a function (lazy imports
are still dependencies). ``shards`` is the format library: every stage may import it, it
imports no stage. A stage never imports a later one, except the pairs in ``EXCEPTIONS``,
each with its reason. ``haloscope/`` (the CLI, the experiments) and ``bench/`` sit above the
stages: they may import anything, and no stage imports them. Shared modules of ``haloscope/``
(errors, atomic, config, argparse_util, log) may be imported by every stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# in dependency order: a package may import itself and those before it
STAGES = ("shards", "preprocess", "train", "infer", "evaluate")
# haloscope.<name> that sit above every stage
ABOVE = ("bench", "experiments", "cli", "env")
# (importing stage, imported module) -> why the later stage is allowed
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("train", "haloscope.evaluate.metrics"): (
        "pure array metrics (ROC, TPR at FPR) that the trainer's validation and early "
        "stopping use; they read arrays, not train internals"
    ),
    ("train", "haloscope.evaluate.detectable"): (
        "the one definition of the pre-registered detectable subset, which validation "
        "reports (val/det_*) on the shards' truth columns"
    ),
    ("train", "haloscope.evaluate.scores"): (
        "the ScoresFrame that evaluate.detectable reads, built by validation from a batch "
        "table (plain numpy columns)"
    ),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted target) of every absolute ``haloscope.*`` import in one module.

    ``from haloscope.evaluate import metrics`` yields ``haloscope.evaluate.metrics`` (the
    names after ``import`` may be modules); relative imports are refused.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: relative import; "
                            "use absolute haloscope.* imports (STYLE.md rule 25)")  # fmt: skip
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("haloscope.")]


def _violations(stage: str) -> list[str]:
    allowed = STAGES[: STAGES.index(stage) + 1]
    bad = []
    for path in sorted((ROOT / stage).rglob("*.py")):
        for line, target in _imports(path):
            package = target.split(".")[1]
            is_stage = package in STAGES
            if (is_stage and package in allowed) or (not is_stage and package not in ABOVE):
                continue
            if any(target == mod or target.startswith(mod + ".")
                   for (src, mod) in EXCEPTIONS if src == stage):  # fmt: skip
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_a_later_stage(stage):
    bad = "\n".join(_violations(stage))
    assert not bad, f"{stage} may import only {STAGES[: STAGES.index(stage) + 1]}:\n{bad}"


def test_the_scan_sees_the_known_imports():
    """Not vacuous: it finds imports inside functions and the documented exception."""
    targets = {t for path in (ROOT / "train").rglob("*.py") for _, t in _imports(path)}
    assert any(t.startswith("haloscope.shards.") for t in targets)
    assert "haloscope.evaluate.metrics" in targets  # train/validate.py
    lazy = _imports(ROOT / "infer" / "run.py")  # train's checkpoint loader, inside a function
    assert any(t == "haloscope.train.checkpoint.load_for_inference" for _, t in lazy)


def test_every_exception_is_still_used():
    for stage, module in EXCEPTIONS:
        used = any(t == module or t.startswith(module + ".")
                   for path in (ROOT / stage).rglob("*.py") for _, t in _imports(path))  # fmt: skip
        assert used, f"({stage!r}, {module!r}) in EXCEPTIONS is no longer imported: remove it"
