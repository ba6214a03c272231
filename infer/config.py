"""The typed configuration of ``haloscope infer``: one frozen dataclass, validated on creation.

``InferConfig`` is built from the CLI flags (``infer/cli.py``, each field one flag) or directly
by callers; every cross-field check raises ``ValueError`` naming the flag, which the CLI
turns into a one-line ``ConfigError``. Device, precision and step are ``ComputeConfig``'s,
the same flags as in ``haloscope train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from haloscope.config import per_rank
from haloscope.train.config import ComputeConfig

__all__ = ["InferConfig"]


@dataclass(frozen=True, kw_only=True)
class InferConfig(ComputeConfig):
    """Everything one scoring run needs."""

    ckpt: str
    """Checkpoint written by `haloscope train` (best.pt or last.pt)."""
    out: str
    """Scores parquet to write (atomically: temp name, then rename)."""
    shards: str | None = None
    """Shard root holding <split>/manifest.json (exclusive with --data)."""
    data: str | None = None
    """Hive-partitioned parquet root, region_split=<split>/ (exclusive with --shards)."""
    split: Literal["train", "val", "test"] = "test"
    """Split to score."""
    batch_size: int = 1024
    """Global batch: images per model call of all ranks together, split evenly over them."""
    tta: bool = False
    """Mean logit over the 8 dihedral (D4) transforms of every image (8x the compute)."""
    num_workers: int = 2
    """Loader worker processes per rank: shard reading, or parquet decoding (0: in-process)."""
    cache_dir: str | None = None
    """With URL --shards (http(s)://, s3://): local folder caching whole shards, verified by
    sha256 and shared by workers and runs (docs/shards.md); None: stream records, no disk."""
    model_name: str | None = None
    """Value of the `model` column; None: the checkpoint's run directory name."""
    progress: bool = True
    """tqdm progress bar on rank 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.shards is None) == (self.data is None):
            raise ValueError("give exactly one of --shards SHARDS or --data DATA")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"--split must be train, val or test, got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if not str(self.out).endswith(".parquet"):
            raise ValueError(f"--out must name a .parquet file, got {self.out!r}")
        if self.model_name is not None and not self.model_name.strip():
            raise ValueError("--model-name must not be empty")

    @property
    def source_kind(self) -> str:
        """``"shards"`` or ``"parquet"``."""
        return "shards" if self.shards is not None else "parquet"

    def per_rank_batch(self, world_size: int) -> int:
        """Images per model call on each rank; the global batch must divide evenly."""
        return per_rank(self.batch_size, world_size)

    def resolved_model_name(self) -> str:
        """The `model` column: --model-name, else the checkpoint's directory name."""
        if self.model_name is not None:
            return self.model_name
        path = Path(self.ckpt).resolve()
        return path.parent.name or path.stem
