"""``haloscope mine``: hard-negative lookup from the control scores of earlier models."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from haloscope.argparse_util import ConfigCLI
from haloscope.config import option
from haloscope.evaluate.mine import mine_hard_negatives
from haloscope.log import setup_logging

__all__ = ["CLI", "MineConfig", "main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MineConfig:
    """Which scores to mine and how many controls to keep (the flags of ``haloscope mine``)."""

    scores: tuple[str, ...] = option(nargs="+", metavar="SCORES.parquet")
    """Scores parquet of one or more models (`haloscope infer` output)."""
    out: str = option(metavar="LOOKUP.parquet")
    """Lookup parquet to write."""
    min_score: float = 0.9
    """Keep controls with score > this value."""
    top_k: int = 20_000
    """At most this many distinct positions per model."""
    min_count: int = 0
    """When fewer controls of a model pass --min-score, take its min(top-k, min-count)
    highest-scoring controls instead (0: off)."""
    split: tuple[str, ...] = ("train",)
    """Comma-separated splits to mine from (train or val; test scores are refused)."""


_DESCRIPTION = """\
Select controls (label == 0) that earlier models scored above --min-score, top-k per
model, merged and de-duplicated by (round(ra,6), round(dec,6)), into the hard-negative
lookup parquet read by `haloscope shards --hard-neg-path`. Test-split scores are
refused; an empty result is an error."""

CLI = ConfigCLI("mine", MineConfig, _DESCRIPTION)


def main(argv: list[str]) -> int:
    """Run ``haloscope mine``; user errors raise ``HaloscopeError`` (one line, exit 2)."""
    cfg = CLI.parse(argv)
    setup_logging()
    table = mine_hard_negatives(
        list(cfg.scores), cfg.out, cfg.min_score, cfg.top_k, list(cfg.split), cfg.min_count
    )
    multi = sum(1 for n in table.column("num_models").to_pylist() if n > 1)
    print(f"mine: {table.num_rows} hard negatives ({multi} found by several models) -> {cfg.out}")
    return 0
