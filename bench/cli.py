"""``haloscope bench``: run one benchmark and write its JSON result.

Each benchmark is a module that exposes ``run_bench(out_path: str, **options) -> dict``:
``loader``, ``convert``, ``simulate``, ``gpu``, ``search``, ``gil`` and ``multigpu`` all live in this package
(``bench/``; ``gpu --whole-run`` is ``whole_run``); this module only dispatches. A benchmark
with options of its own also exposes ``parse_options(argv) -> dict`` (the words after the
benchmark's name; ``haloscope bench NAME --help`` lists them).
"""

from __future__ import annotations

import importlib
import json

from haloscope.argparse_util import VerbParser
from haloscope.errors import ConfigError

__all__ = ["BENCHES", "main"]

# name -> (module, what it measures)
BENCHES: dict[str, tuple[str, str]] = {
    "loader": (
        "haloscope.bench.loader",
        "samples/s per core, shard bytes -> pinned batch: seed row reader vs plain WebDataset vs haloscope",
    ),
    "convert": (
        "haloscope.bench.convert",
        "parquet -> shards converter rows/s per core and peak memory at two input sizes",
    ),
    "simulate": (
        "haloscope.bench.simulate",
        "mock survey rows/s per core (npz + parquet included) and peak memory at two sizes",
    ),
    "gpu": (
        "haloscope.bench.gpu",
        "GPU training/inference img/s: synthetic vs real reader, eager vs compiled vs CUDA graph",
    ),
    "search": (
        "haloscope.bench.search",
        "search cutouts/s per core (parquet, FITS); --gpu: from shards vs the graphed step",
    ),
    "gil": (
        "haloscope.bench.gil",
        "the training loop's small-call rate beside a curves redraw (thread vs process) and a checkpoint write",
    ),
    "multigpu": (
        "haloscope.bench.multigpu",
        "DDP scaling on 1..N GPUs of one host (torchrun, nccl): img/s, efficiency, equal metrics",
    ),
}


def build_parser() -> VerbParser:
    lines = "\n".join(f"  {name:<9} {desc}" for name, (_, desc) in BENCHES.items())
    parser = VerbParser("bench", "Run one benchmark; results go to a JSON file.\n\n" + lines)
    parser.add_argument("name", choices=list(BENCHES), help="which benchmark")
    parser.add_argument(
        "--out", default=None, help="result JSON path (default: bench/results/<name>.json)"
    )
    return parser


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] in BENCHES and ("-h" in argv[1:] or "--help" in argv[1:]):
        module = importlib.import_module(BENCHES[argv[0]][0])
        if hasattr(module, "parse_options"):  # its own flags' help, not the dispatcher's
            module.parse_options(["--help"])  # argparse prints it and exits 0
    args, rest = build_parser().parse_known_args(argv)
    module_name, _ = BENCHES[args.name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"benchmark {args.name!r} is not available in this version") from None
    options = {}
    if hasattr(module, "parse_options"):
        options = module.parse_options(rest)
    elif rest:
        raise ConfigError(f"bench {args.name} takes no options, got {' '.join(rest)}")
    out = args.out or f"bench/results/{args.name}.json"
    result = module.run_bench(out, **options)
    print(json.dumps(result, indent=2, default=str)[:4000])
    print(f"written: {out}")
    return 0
