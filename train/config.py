"""The trainer's typed configuration: one frozen dataclass per section.

Sources, in precedence order: these defaults < a ``--preset`` < ``--config run.toml`` <
the flat flags of ``haloscope train`` (the seed's names) < ``--section.field=value``.
Every field is one flag (``haloscope.argparse_util.ConfigCLI``), its docstring the help.
The resolved config is written to ``RUN/config.resolved.json`` and into every checkpoint.
This module imports no torch, so ``haloscope train --help`` is fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from haloscope.config import option, per_rank

__all__ = [
    "ComputeConfig",
    "Monitor",
    "Precision",
    "StepMode",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "PRESETS",
    "RESUME_MUTABLE_KEYS",
]


Precision = Literal["auto", "bf16", "fp32"]
StepMode = Literal["auto", "graph", "compile", "eager"]
Monitor = Literal["tpr@fpr1e-4", "tpr@fpr1e-3", "auroc", "det_tpr@fpr1e-4", "det_tpr@fpr1e-3"]
Resume = Literal["no", "yes", "auto"]


@dataclass(frozen=True, kw_only=True)
class ComputeConfig:
    """Device and numerics: the same flags with the same meaning in train and infer."""

    device: str = "auto"
    """auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu, cuda, or cuda:N."""
    precision: Precision = option("auto", switches={"--use-bf16": "bf16", "--no-bf16": "fp32"})
    """bf16 autocast or fp32; auto: bf16 on CUDA, fp32 on CPU. Losses and logits are fp32."""
    step: StepMode = option(
        "auto",
        switches={
            "--compile": "compile",
            "--no-compile": "auto",
            "--cuda-graphs": "auto",
            "--no-cuda-graphs": "eager",
        },
    )
    """How a step runs: auto (one CUDA graph per step on CUDA, eager on CPU), graph (CUDA
    only), compile (torch.compile) or eager."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def use_bf16(self, device_type: str) -> bool:
        """Whether the model runs under bf16 autocast on a device of this type."""
        if self.precision == "auto":
            return device_type == "cuda"
        return self.precision == "bf16"


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the shards are and how batches are drawn."""

    shards: str = ""
    """Shard root holding train/ and val/ (each with manifest.json), from `haloscope shards`."""
    data_root: str | None = option(None, flag="--data")
    """The seed's --data: accepted only when it is a shard root (else run `haloscope shards`)."""
    batch_size: int = 1024
    """Global training batch: all ranks together, split evenly over them. 1024 with lr 1e-3
    reaches a fixed validation target ~1.4x sooner in GPU time than the seed's 256 with lr
    3e-4 (docs/results/recipe); `--preset seed` restores the seed's."""
    val_batch_size: int = 512
    """Global validation batch, split evenly over ranks."""
    num_workers: int = 4
    """Shard-reader worker processes per rank (0: read in the training process)."""
    cache_dir: str | None = None
    """With URL --shards (http(s)://, s3://): local folder caching whole shards, verified by
    sha256 and shared by workers and runs (docs/shards.md); None: stream records, no disk."""
    samples_per_epoch: int | None = None
    """Cap on training samples per epoch (all ranks together); None: the whole train split."""
    max_steps_per_epoch: int | None = None
    """Cap on optimiser steps per epoch; None: no cap."""
    hard_neg_path: str | None = None
    """Checked against the train manifest (hard negatives are built into the shards by
    `haloscope shards --hard-neg-path`); None: not checked."""
    hard_neg_weight: int | None = None
    """Checked against the train manifest (`haloscope shards --hard-neg-weight`); None: not
    checked."""
    min_theta_over_psf: float | None = None
    """Checked against the train manifest (`haloscope shards --min-theta-over-psf`); None: not
    checked."""
    norm_method: str | None = None
    """Checked against the train manifest (`haloscope shards --norm-method`); None: not
    checked."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        for name in ("samples_per_epoch", "max_steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    def per_rank_batch(self, world_size: int, *, val: bool = False) -> int:
        """Per-rank batch size; the global batch must divide evenly over ranks."""
        if val:
            return per_rank(self.val_batch_size, world_size, "--val-batch-size")
        return per_rank(self.batch_size, world_size)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network: a timm ConvNeXt backbone and the seed's meta MLP head."""

    arch: str = "convnext_tiny"
    """timm ConvNeXt name (convnext_tiny; convnext_atto/femto/pico/nano for tests), random init."""
    dropout: float = 0.1
    """Dropout in the meta MLP and classifier head."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the backbone (torchvision's ConvNeXt default, as in the seed)."""
    meta_cols: tuple[str, ...] | None = None
    """Meta inputs; None: the train manifest's columns (a given list must equal them)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"--drop-path-rate must be in [0, 1), got {self.drop_path_rate}")


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Training loss, always computed in fp32 from logits."""

    name: Literal["focal", "bce"] = option("focal", flag="--loss")
    """focal (the seed's Gen4 loss) or bce."""
    alpha: float | None = option(0.25, flag="--focal-alpha")
    """Focal weight on positives (lenses), 1 - alpha on controls; None: no class weight."""
    gamma: float = option(2.0, flag="--focal-gamma")
    """Focal-loss focusing parameter; 0 reduces to (alpha-weighted) BCE."""

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"--focal-gamma must be >= 0, got {self.gamma}")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--focal-alpha must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay, stepped per optimiser step."""

    lr: float = 1e-3
    """Peak learning rate (1e-3 for the default batch 1024: ConvNeXt's 4e-3 x B / 4096; the
    seed's 3e-4 at batch 256 is `--preset seed`)."""
    weight_decay: float = 1e-2
    """AdamW weight decay, not applied to norms, biases or buffers."""
    betas: tuple[float, ...] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int | None = None
    """Linear warmup steps; None: use warmup_frac."""
    warmup_frac: float = 0.05
    """Warmup as a fraction of all planned steps (when warmup_steps is None)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights, updated after every optimiser step t with
    decay min(ema_decay, (1+t)/(10+t)); validation, early stopping, best.pt and inference then
    use the averaged weights. 0: off; else in (0, 1), e.g. 0.999. A --resume may not change
    it."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"--optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"--warmup-frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"--min-lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.grad_clip < 0:
            raise ValueError(f"--grad-clip must be >= 0, got {self.grad_clip}")
        if self.ema_decay != 0.0 and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be 0 (off) or in (0, 1), got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class RunConfig(ComputeConfig):
    """Run length, devices, numerics, cadence and outputs."""

    out_dir: str = ""
    """Run directory: checkpoints, metrics.jsonl/csv, config.resolved.json (required)."""
    epochs: int = 50
    """Maximum number of epochs."""
    seed: int = 1337
    """Seed of model init, dropout, augmentation and shard order."""
    augment: bool = True
    """D4 (rot90 x flip) augmentation per sample on the device."""
    channels_last: bool | None = None
    """Channels-last memory format; None: on for CUDA, off on CPU (3x slower there)."""
    early_stopping_patience: int = 5
    """Stop after this many validations without improvement of the monitor (0: never)."""
    monitor: Monitor = "tpr@fpr1e-4"
    """Val metric of early stopping and best.pt: tpr@fpr1e-4 (the seed's), tpr@fpr1e-3,
    auroc, or det_tpr@fpr1e-4 / det_tpr@fpr1e-3 (the detectable subset's lenses, arc_snr >= 5
    and theta_E/psfsize_r >= 0.8, against all val controls); ties are broken by val AUROC."""
    val_every: int = 1
    """Validate every N epochs (and after the last)."""
    ckpt_every_steps: int = 500
    """Also write last.pt every N optimiser steps (0: only at epoch ends and on signals)."""
    log_every: int = 10
    """Console/TensorBoard cadence in steps (metrics.jsonl gets every step)."""
    sync_every: int = 50
    """Read the step losses from the device every N steps (and before validations and
    checkpoints); the steps between never wait for the GPU. Under torchrun a stop signal
    takes effect at these reads."""
    resume: Resume = option("no", nargs="?", const="yes", switches={"--no-resume": "no"})
    """Continue from OUT_DIR/last.pt: --resume (or yes) needs it; --resume auto continues
    when it exists and starts afresh when not (a requeued Slurm job); no: start afresh."""
    overwrite: bool = False
    """Start afresh in an OUT_DIR that already holds last.pt."""
    tensorboard: bool = False
    """Also write TensorBoard events to OUT_DIR/tb (needs the tensorboard package)."""
    progress: bool = True
    """tqdm progress bar on rank 0."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms (debugging; slower)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.monitor not in get_args(Monitor):
            raise ValueError(
                f"--monitor must be one of {', '.join(get_args(Monitor))}, got {self.monitor!r}"
            )
        for name in ("early_stopping_patience", "ckpt_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )
        for name in ("val_every", "log_every", "sync_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )

    # NOTE: the trainer's earlier names of `precision` and `step`, read by train/run.py.
    @property
    def bf16(self) -> bool | None:
        """bf16 autocast: True, False, or None for auto (on CUDA only)."""
        return None if self.precision == "auto" else self.precision == "bf16"

    @property
    def compile(self) -> bool:
        """torch.compile the model (``step == "compile"``)."""
        return self.step == "compile"

    @property
    def cuda_graphs(self) -> bool:
        """One CUDA graph per training step where CUDA allows it (``step`` auto or graph)."""
        return self.step in ("auto", "graph")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything `haloscope train` needs; stored resolved in every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Named layers between the defaults and --config.
PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "none": {},
    # The seed's recipe (GEN4_HARDNEG.md): batch 256 at lr 3e-4. The defaults (1024, 1e-3)
    # were chosen by time to a validation target on one H200 (docs/results/recipe).
    "seed": {"data": {"batch_size": 256}, "optim": {"lr": 3e-4}},
    # A few-minute CPU demo that still learns: the smallest ConvNeXt (3.7M parameters, ~8x
    # cheaper per step than Tiny on a CPU), a higher peak lr for the few hundred steps, and
    # best.pt chosen by AUROC (the demo's val split has a few hundred controls, so a
    # tpr@fpr1e-4 monitor would rest on zero false positives and pick epochs by noise).
    "demo": {
        "model": {"arch": "convnext_atto"},
        "data": {"num_workers": 1, "val_batch_size": 256, "max_steps_per_epoch": 60},
        "optim": {"warmup_steps": 10, "lr": 1e-3},
        "run": {
            "log_every": 10,
            "ckpt_every_steps": 30,
            "early_stopping_patience": 0,
            "monitor": "auroc",
        },
    },
}

# Keys a --resume may change; any other difference from the checkpoint is refused.
RESUME_MUTABLE_KEYS: frozenset[str] = frozenset(
    {
        "data.shards",
        "data.data_root",
        "data.num_workers",
        "data.cache_dir",
        "run.out_dir",
        "run.epochs",
        "run.early_stopping_patience",
        "run.ckpt_every_steps",
        "run.log_every",
        "run.sync_every",
        "run.resume",
        "run.overwrite",
        "run.tensorboard",
        "run.progress",
        "run.device",
        "run.step",
        # the names of `step` before it replaced them, as stored in older checkpoints
        "run.compile",
        "run.cuda_graphs",
    }
)
