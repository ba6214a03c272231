"""The single entry point ``haloscope <verb> [flags]``.

Each verb lives in the package that owns it and exposes ``main(argv) -> int``; this module
only dispatches, so ``haloscope --help`` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["VERBS", "describe_os_error", "main", "run_verb"]

# verb -> (module, one-line description)
VERBS: dict[str, tuple[str, str]] = {
    "validate": ("haloscope.preprocess.cli", "check a parquet root against the input contract"),
    "simulate": (
        "haloscope.preprocess.sim.cli",
        "write a mock DR10 survey in the real layout",
    ),
    "transfer-sets": (
        "haloscope.preprocess.sim.transfer_cli",
        "independent lenstronomy lens/confuser sets for a transfer check",
    ),
    "shards": ("haloscope.preprocess.convert.cli", "convert parquet splits into WebDataset shards"),
    "train": ("haloscope.train.cli", "train ConvNeXt-Tiny (focal loss) on shards"),
    "infer": ("haloscope.infer.cli", "score shards or parquet with a checkpoint"),
    "search": ("haloscope.infer.search.cli", "score, rank and grade unlabelled survey cutouts"),
    "eval": ("haloscope.evaluate.cli", "stratified metrics, confidence intervals and a report"),
    "mine": ("haloscope.evaluate.mine_cli", "hard-negative lookup from control scores"),
    "gen4": ("haloscope.experiments.gen4_cli", "Gen3 -> mine -> Gen4 experiment end to end"),
    "bench": ("haloscope.bench.cli", "loader / converter / simulator / gpu benchmarks"),
    "env": ("haloscope.env", "torch/CUDA/GPU/launcher report and what the trainer will use"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {verb:<9} {desc}" for verb, (_, desc) in VERBS.items()]
    parser = argparse.ArgumentParser(
        prog="haloscope",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Strong-lens finder for DESI Legacy Survey DR10 cutouts.\n\nverbs:\n"
        + "\n".join(lines),
        epilog="Run `haloscope <verb> --help` for the flags of one verb. Flags accept both "
        "spellings, --batch-size and --batch_size, and mean the same in every verb. A verb "
        "with settings also takes --config FILE.toml and --print-config (its resolved TOML).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("verb", nargs="?", choices=list(VERBS), metavar="verb", help="see above")
    return parser


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error: the path(s) involved and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return f"{reason} ({type(exc).__name__})"
    where = str(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {exc.filename2}"
    return f"{where}: {reason}"


def run_verb(verb: str, argv: Sequence[str]) -> int:
    """Import the verb's module and run its ``main``; user errors become one line, exit 2."""
    from haloscope.errors import HaloscopeError

    module_name, _ = VERBS[verb]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"haloscope {verb}: not implemented in this version", file=sys.stderr)
        return 3
    try:
        return int(module.main(list(argv)) or 0)
    except HaloscopeError as exc:
        print(f"haloscope {verb}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # NOTE: the environment refused a file operation (read-only folder, disk full,
        # missing mount): one line naming the path and the OS error, as for bad input.
        # HALOSCOPE_TRACEBACK=1 re-raises for debugging.
        if os.environ.get("HALOSCOPE_TRACEBACK") == "1":
            raise
        print(f"haloscope {verb}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"haloscope {verb}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``haloscope <verb> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS:
        return run_verb(argv[0], argv[1:])
    parser = _top_parser()
    args = parser.parse_args(argv)
    if args.version:
        from haloscope import __version__

        print(f"haloscope {__version__}")
        return 0
    parser.print_help()
    return 0 if args.verb is None else 2
