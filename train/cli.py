"""``haloscope train``: flags -> resolved config -> ``run_training``.

Single process: ``haloscope train --shards S --out RUN``. Several GPUs or nodes:
``torchrun --nproc-per-node 8 -m haloscope train --shards S --out RUN`` (one process
per GPU; ``--batch-size`` is the global batch). The flags are the fields of
``TrainConfig`` (``train/config.py``); torch is imported only after parsing.
"""

from __future__ import annotations

from haloscope.argparse_util import ConfigCLI
from haloscope.train.config import PRESETS, TrainConfig

__all__ = ["CLI", "main", "parse_config"]

_DESCRIPTION = """\
Train the lens finder on shards (timm ConvNeXt + meta head, focal loss, DDP via torchrun).
Batch sizes are global (all ranks together) in every verb; --num-workers is per rank."""

CLI = ConfigCLI("train", TrainConfig, _DESCRIPTION, presets=PRESETS)


def parse_config(argv: list[str]) -> TrainConfig:
    """Resolve the config of a command line: defaults < preset < --config < flags < dotted.

    Raises:
        ConfigError: unknown flag or config key, bad value, or a failed cross-field check.
    """
    return CLI.parse(argv)


def main(argv: list[str]) -> int:
    """Entry point of ``haloscope train``; returns the process exit code."""
    cfg = parse_config(argv)
    # NOTE: imported after parsing: run imports torch, kept off `haloscope train --help`.
    from haloscope.train.run import run_training

    return run_training(cfg)
