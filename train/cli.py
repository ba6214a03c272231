"""``haloscope train``: flags -> resolved config -> ``run_training``.

Single process: ``haloscope train --shards S --out-dir RUN``. Several GPUs or nodes:
``torchrun --nproc-per-node 8 -m haloscope train --shards S --out-dir RUN`` (one process
per GPU; ``--batch-size`` is the global batch).
"""

from __future__ import annotations

from haloscope.config import load_config
from haloscope.errors import ConfigError
from haloscope.train.config import PRESETS, TrainConfig
from haloscope.train.flags import build_parser, flag_overrides

__all__ = ["main", "parse_config"]


def parse_config(argv: list[str]) -> TrainConfig:
    """Resolve the config of a command line: defaults < preset < --config < flags < dotted.

    Raises:
        ConfigError: unknown flag or config key, bad value, or a failed cross-field check.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    dotted: list[str] = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if not (item.startswith("--") and "." in item.split("=", 1)[0]):
            raise ConfigError(f"unrecognised argument {item!r} (see `haloscope train --help`)")
        if "=" not in item:  # "--optim.lr 3e-4"
            if i + 1 >= len(rest):
                raise ConfigError(f"override {item} needs a value")
            item, i = f"{item}={rest[i + 1]}", i + 1
        dotted.append(item)
        i += 1
    return load_config(
        TrainConfig,
        layers=[PRESETS[args.preset]],
        toml_path=args.config,
        overrides=[*flag_overrides(args), *dotted],
    )


def main(argv: list[str]) -> int:
    """Entry point of ``haloscope train``; returns the process exit code."""
    cfg = parse_config(argv)
    from haloscope.train.run import run_training  # torch import only after --help/parse

    return run_training(cfg)
