"""``haloscope mine``: hard-negative lookup from the control scores of earlier models."""

from __future__ import annotations

import logging

from haloscope.argparse_util import VerbParser, parse_csv
from haloscope.evaluate.mine import MINABLE_SPLITS, mine_hard_negatives
from haloscope.log import setup_logging

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> VerbParser:
    """The ``mine`` argument parser (every flag shows its default in --help)."""
    parser = VerbParser(
        "mine",
        "Select controls (label == 0) that earlier models scored above --min-score, top-k per\n"
        "model, merged and de-duplicated by (round(ra,6), round(dec,6)), into the hard-negative\n"
        "lookup parquet read by `haloscope shards --hard-neg-path`. Test-split scores are\n"
        "refused; an empty result is an error.",
    )
    parser.add_argument("--scores", nargs="+", required=True, metavar="SCORES.parquet",
                        help="scores parquet of one or more models (infer output)")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="LOOKUP.parquet",
                        help="lookup parquet to write")  # fmt: skip
    parser.add_argument("--min-score", type=float, default=0.9,
                        help="keep controls with score > this value")  # fmt: skip
    parser.add_argument("--top-k", type=int, default=20_000,
                        help="at most this many distinct positions per model")  # fmt: skip
    parser.add_argument("--min-count", type=int, default=0,
                        help="when fewer controls of a model pass --min-score, take its "
                        "min(top-k, min-count) highest-scoring controls instead (0: off)")  # fmt: skip
    parser.add_argument("--split", default="train",
                        help=f"comma-separated splits to mine from ({', '.join(MINABLE_SPLITS)}); "
                        "test is refused")  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """Run ``haloscope mine``; user errors raise ``HaloscopeError`` (one line, exit 2)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    table = mine_hard_negatives(args.scores, args.out, args.min_score, args.top_k,
                                parse_csv(args.split), args.min_count)  # fmt: skip
    multi = sum(1 for n in table.column("num_models").to_pylist() if n > 1)
    print(f"mine: {table.num_rows} hard negatives ({multi} found by several models) -> {args.out}")
    return 0
