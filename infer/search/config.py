"""The typed configuration of ``haloscope search``: one frozen dataclass, each field a flag.

Device, precision and step are ``ComputeConfig``'s (the same flags as train and infer);
every cross-field check raises ``ValueError`` naming the flag (a one-line ``ConfigError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from haloscope.config import option, per_rank
from haloscope.train.config import ComputeConfig

__all__ = ["SearchConfig"]


@dataclass(frozen=True, kw_only=True)
class SearchConfig(ComputeConfig):
    """Everything one search needs."""

    input: str
    """Cutouts to score: unlabelled parquet (a file, a folder or a glob), a folder of Legacy
    Survey FITS cutouts (with --catalog), or shards of `haloscope shards --unlabelled`, also
    at an http(s):// or s3:// URL (the split folder or its root)."""
    ckpt: tuple[str, ...] = option(nargs="+", metavar="CKPT.pt")
    """Checkpoint(s) of `haloscope train`; several form an ensemble (mean logit, each
    model's logit kept as logit_<k>); all must share one preprocessing."""
    out: str
    """Output folder: parts/ while scoring, then candidates.parquet, top<N>.csv,
    rejects.parquet, summary.json, candidates.html. Re-running the same command resumes."""
    input_kind: Literal["auto", "parquet", "fits", "shards"] = "auto"
    """What --input is; auto: a folder with manifest.json (or search/manifest.json), or a
    URL, is shards, a folder of *.fits[.gz|.fz] files is FITS, anything else parquet."""
    cache_dir: str | None = None
    """With a URL --input (http(s)://, s3://): local folder caching whole shards, verified by
    sha256 and shared by workers and runs (docs/search.md); not given: OUT/shard-cache. Unused
    (a warning) for a local --input."""
    catalog: str | None = None
    """FITS input only: parquet or CSV with a `file` (file name) or `id` (file name without
    suffix) column and the checkpoint's meta columns (optional: ra, dec)."""
    id_column: str = "auto"
    """Parquet id column; auto: the first of id, objid, task_id present, else
    J{ra:.5f}{dec:+.5f} from the position."""
    tta: Literal["none", "d4"] = option("none", nargs="?", const="d4")
    """Test-time augmentation: d4 = mean logit over the 8 rotations/flips (8x compute);
    --tta alone means d4."""
    batch_size: int = 1024
    """Global batch: cutouts per model call of all ranks together, split evenly over them."""
    num_workers: int = 2
    """Loader worker processes per rank (reading, decoding; 0: in-process)."""
    chunk_size: int = 4096
    """FITS files per chunk (the unit of resume and of the rank split; a parquet chunk is a
    row group, a shards chunk one shard)."""
    top_n: int = 1000
    """Candidates in top<N>.csv and in the gallery."""
    grades: str | None = None
    """A graded CSV (columns id, grade; the gallery's export) joined into candidates.parquet
    as a `grade` column."""
    progress: bool = True
    """tqdm progress bar (cutouts/s) on rank 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}"),
            (self.chunk_size >= 1, f"--chunk-size must be >= 1, got {self.chunk_size}"),
            (self.top_n >= 1, f"--top-n must be >= 1, got {self.top_n}"),
            (len(self.ckpt) >= 1, "--ckpt needs at least one checkpoint"),
            (len(set(self.ckpt)) == len(self.ckpt), f"--ckpt lists a file twice: {self.ckpt}"),
            (bool(self.id_column.strip()), "--id-column must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def per_rank_batch(self, world_size: int) -> int:
        """Cutouts per model call on each rank; the global batch must divide evenly."""
        return per_rank(self.batch_size, world_size)
