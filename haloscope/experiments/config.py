"""Settings of the Gen3 -> mine -> Gen4 experiment: ``Gen4Config`` and its presets.

The flags of ``haloscope gen4`` are this dataclass's fields (``gen4_cli.py``); the stages
(``gen4.py``) read it. ``--tiny`` is the preset of the same name.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from haloscope.config import option

__all__ = ["Gen4Config", "PRESETS"]


@dataclass(frozen=True, kw_only=True)
class Gen4Config:
    """Scale and training settings of one experiment (the flags of ``haloscope gen4``)."""

    out: Path = option(metavar="DIR")
    """Experiment folder (re-run the same command to resume)."""
    data: Path | None = None
    """Existing parquet root (mock or DR10); None: simulate ``rows`` rows into out/data."""
    rows: int = 60000
    """Mock survey rows (all splits) when simulating."""
    seed: int = 0
    """Seed of the mock, the shard shuffle and both trainings (the same for Gen3 and Gen4)."""
    workers: int = option(2, flag="--workers")
    """Processes of simulate and shards (their --num-workers); not the loader workers."""
    epochs: int = 50
    """Maximum epochs of each training."""
    batch_size: int = 1024
    """Global training batch (all ranks together); the trainer's default lr (1e-3) fits it."""
    arch: str = "convnext_tiny"
    """timm ConvNeXt of both generations."""
    hard_neg_weight: int = 5
    """Copies of each mined control in the Gen4 train shards."""
    min_score: float = 0.9
    """Mine controls scored above this."""
    top_k: int = 20000
    """Mine at most this many controls."""
    min_count: int = 20000
    """Mine at least min(top_k, min_count) controls: the highest-scoring ones when fewer pass
    min_score (0: off). A Gen3 scoring its own training split rarely passes 0.9."""
    infer_batch_size: int = 1024
    """Global batch of every inference (all ranks together)."""
    num_workers: int = 2
    """Loader workers per rank in train and infer."""
    device: str = "auto"
    """Device of train and infer: auto, cpu, cuda."""
    nproc_per_node: int = 1
    """Processes per node for train and infer (torchrun when > 1)."""
    train_args: tuple[str, ...] = option((), parse=shlex.split, metavar="'FLAGS'")
    """Extra `haloscope train` flags for both generations, one quoted string (one flag alone
    needs the = form: --train-args=--compile)."""
    sim_args: tuple[str, ...] = option((), parse=shlex.split, metavar="'FLAGS'")
    """Extra `haloscope simulate` flags, one quoted string (e.g. --selection-frac 0)."""
    quiet: bool = False
    """Stage output to OUT/logs/ only, not also to stderr."""

    def scale(self) -> dict:
        """Settings that must not change when a run is resumed."""
        keep = (
            "data",
            "rows",
            "seed",
            "epochs",
            "batch_size",
            "arch",
            "hard_neg_weight",
            "min_score",
            "top_k",
            "min_count",
            "train_args",
            "sim_args",
        )
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in ((k, getattr(self, k)) for k in keep)
        }

    def __post_init__(self) -> None:
        for name in (
            "rows",
            "workers",
            "epochs",
            "batch_size",
            "top_k",
            "infer_batch_size",
            "nproc_per_node",
            "hard_neg_weight",
        ):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.min_count < 0:
            raise ValueError(f"--min-count must be >= 0, got {self.min_count}")
        if not 0.0 <= self.min_score < 1.0:
            raise ValueError(f"--min-score must be in [0, 1), got {self.min_score}")


# Named layers under --config; the defaults are the full mock scale (`make gen4`, and the GPU
# run with --rows ~2M). Flags given explicitly always win.
PRESETS: dict[str, dict] = {
    "none": {},
    # a few minutes on 2 CPU cores
    "tiny": {"rows": 3000, "epochs": 2, "batch_size": 64, "arch": "convnext_atto",
             # a 2-epoch model rarely scores a control > 0.9: mine its top controls instead
             "min_score": 0.0, "top_k": 60, "min_count": 0, "infer_batch_size": 256,
             "num_workers": 0,
             "train_args": ("--max-steps-per-epoch", "8", "--val-batch-size", "256",
                            "--warmup-steps", "4", "--early-stopping-patience", "0"),
             # 2 rows per galaxy instead of ~9: more distinct samples per simulated row
             "sim_args": ("--selection-frac", "0")},
}  # fmt: skip
