"""The typed configuration of ``haloscope infer``: one frozen dataclass, validated on creation.

``InferConfig`` is built from the CLI flags (``infer/cli.py``) or directly by callers such as
``haloscope gen4``; every cross-field check raises ``ValueError`` naming the flag, which the
CLI turns into a one-line ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DEVICES", "PRECISIONS", "STEPS", "InferConfig"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
STEPS: tuple[str, ...] = ("auto", "graph", "compile", "eager")


@dataclass(frozen=True, kw_only=True)
class InferConfig:
    """Everything one scoring run needs."""

    ckpt: str
    """Checkpoint written by `haloscope train` (best.pt or last.pt)."""
    out: str
    """Scores parquet to write (atomically: temp name, then rename)."""
    shards: str | None = None
    """Shard root holding <split>/manifest.json (exclusive with data)."""
    data: str | None = None
    """Hive-partitioned parquet root, region_split=<split>/ (exclusive with shards)."""
    split: str = "test"
    """Split to score: train, val or test."""
    batch_size: int = 1024
    """Images per model call per rank (the last call may be shorter)."""
    tta: bool = False
    """Mean logit over the 8 dihedral (D4) transforms of every image."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu or cuda."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Model numerics: auto = bf16 autocast on CUDA, fp32 on CPU. Logits are always fp32."""
    step: str = "auto"
    """Inference step: auto (a CUDA graph per batch on CUDA, eager on CPU), graph, compile, eager."""
    num_workers: int = 2
    """Loader worker processes per rank: shard reading, or parquet decoding (0: in-process)."""
    model_name: str | None = None
    """Value of the `model` column; None: the checkpoint's run directory name."""
    progress: bool = True
    """tqdm progress bar on rank 0."""

    def __post_init__(self) -> None:
        if (self.shards is None) == (self.data is None):
            raise ValueError("give exactly one of --shards SHARDS or --data DATA")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"--split must be train, val or test, got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be one of {DEVICES} or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.step not in STEPS:
            raise ValueError(f"--step must be one of {STEPS}, got {self.step!r}")
        if not str(self.out).endswith(".parquet"):
            raise ValueError(f"--out must name a .parquet file, got {self.out!r}")
        if self.model_name is not None and not self.model_name.strip():
            raise ValueError("--model-name must not be empty")

    @property
    def source_kind(self) -> str:
        """``"shards"`` or ``"parquet"``."""
        return "shards" if self.shards is not None else "parquet"

    def resolved_model_name(self) -> str:
        """The `model` column: --model-name, else the checkpoint's directory name."""
        if self.model_name is not None:
            return self.model_name
        path = Path(self.ckpt).resolve()
        return path.parent.name or path.stem

    def use_bf16(self, device_type: str) -> bool:
        """Whether the model runs under bf16 autocast on a device of this type."""
        if self.precision == "auto":
            return device_type == "cuda"
        return self.precision == "bf16"
