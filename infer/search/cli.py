"""``haloscope search``: score unlabelled cutouts with one or more checkpoints and rank them.

Single process::

    haloscope search --input CUTOUTS/ --ckpt RUN/best.pt --out SEARCH/

Several GPUs (or nodes), each rank scoring a disjoint part; killed and re-run, it resumes::

    torchrun --nproc-per-node 8 -m haloscope search --input SHARDS/ --ckpt A.pt B.pt --out SEARCH/

The flags are the fields of ``SearchConfig`` (``infer/search/config.py``); torch is imported
only after parsing.
"""

from __future__ import annotations

from haloscope.argparse_util import ConfigCLI
from haloscope.infer.search.config import SearchConfig

__all__ = ["CLI", "main", "parse_config"]

_DESCRIPTION = """\
Score unlabelled cutouts (parquet, Legacy Survey FITS + catalogue, or unlabelled shards) with
one checkpoint or an ensemble (mean logit), rank them and write to --out: candidates.parquet
(id, ra, dec, logit, score, logit_<k> per model, rank), top<N>.csv, rejects.parquet (id,
reason), summary.json and the candidates.html gallery. Preprocessing is the checkpoint's.
The input is cut into chunks (parquet row groups, shards, --chunk-size FITS files); each
finished chunk is one file parts/part-<rank>-<chunk>.parquet, so a killed search re-run with
the same flags skips finished chunks; other checkpoints or inputs in the same --out are
refused. Under torchrun chunk k goes to rank k % world_size. See the README, "Searching a survey"."""

CLI = ConfigCLI("search", SearchConfig, _DESCRIPTION)


def parse_config(argv: list[str]) -> SearchConfig:
    """The validated ``SearchConfig`` of a command line.

    Raises:
        ConfigError: an invalid flag, config key or combination, naming the flag.
    """
    return CLI.parse(argv)


def main(argv: list[str]) -> int:
    """Run ``haloscope search``; returns the exit status."""
    cfg = parse_config(argv)
    # NOTE: imported after parsing: run imports torch, kept off `haloscope search --help`.
    from haloscope.infer.search.run import run_search

    run_search(cfg)
    return 0
