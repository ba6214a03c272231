"""``haloscope infer``: score shards or raw parquet with a checkpoint into a scores parquet.

Single process::

    haloscope infer --ckpt RUN/best.pt --shards SHARDS --split test --out RUN/scores_test.parquet

Several GPUs (or several CPU processes with gloo), each rank scoring a disjoint part::

    torchrun --nproc-per-node 8 -m haloscope infer --ckpt RUN/best.pt --shards SHARDS ...

The flags are the fields of ``InferConfig`` (``infer/config.py``); torch is imported only
after parsing.
"""

from __future__ import annotations

from haloscope.argparse_util import ConfigCLI
from haloscope.infer.config import InferConfig

__all__ = ["CLI", "main", "parse_config"]

_DESCRIPTION = """\
Score one split with a checkpoint into a parquet table (docs/inference.md): task_id, ra, dec,
label, the strata columns, fp32 logit and score (= sigmoid(logit)), model. Preprocessing is
the checkpoint's own (outer normalisation, its meta columns, its resolvability cut): data made
with other settings is refused. bf16 autocast on CUDA with an fp32 logit layer, so bf16 adds
no ties. Under torchrun every rank scores a disjoint part and rank 0 writes the file;
--batch-size is the global batch, as in train."""

CLI = ConfigCLI("infer", InferConfig, _DESCRIPTION)


def parse_config(argv: list[str]) -> InferConfig:
    """The validated ``InferConfig`` of a command line (defaults < --config < flags).

    Raises:
        ConfigError: an invalid flag, config key or combination, naming the flag.
    """
    return CLI.parse(argv)


def main(argv: list[str]) -> int:
    """Run ``haloscope infer``; returns the exit status."""
    cfg = parse_config(argv)
    # NOTE: imported after parsing: run imports torch, kept off `haloscope infer --help`.
    from haloscope.infer.run import run_inference

    run_inference(cfg)
    return 0
