"""The flat flags of ``haloscope train`` (the seed's names) and their config keys.

Each flag maps to one ``section.field`` of ``TrainConfig``; a given flag becomes a
``--section.field=value`` override applied after ``--config``. Flags that are not given
leave the config alone, so ``--help`` shows the dataclass defaults (or the preset's).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from haloscope.argparse_util import VerbParser
from haloscope.train.config import PRESETS, TrainConfig

__all__ = ["FLAGS", "SWITCHES", "build_parser", "flag_overrides"]

# flag -> (config key, value type for argparse, help)
FLAGS: dict[str, tuple[str, type, str]] = {
    "--shards": ("data.shards", str, "shard root with train/ and val/ from `haloscope shards`"),
    "--data": ("data.data_root", str, "the seed's data flag: only a shard root is accepted"),
    "--out-dir": ("run.out_dir", str, "run directory (checkpoints, metrics, resolved config)"),
    "--arch": ("model.arch", str, "timm ConvNeXt (convnext_tiny; convnext_atto etc. for tests)"),
    "--epochs": ("run.epochs", int, "maximum epochs"),
    "--batch-size": ("data.batch_size", int, "global batch, split evenly over ranks"),
    "--val-batch-size": ("data.val_batch_size", int, "global validation batch"),
    "--lr": ("optim.lr", float, "peak AdamW learning rate"),
    "--weight-decay": ("optim.weight_decay", float, "AdamW decay (not on norms/biases)"),
    "--warmup-steps": ("optim.warmup_steps", int, "linear warmup steps (overrides --warmup-frac)"),
    "--warmup-frac": ("optim.warmup_frac", float, "warmup as a fraction of all steps"),
    "--min-lr": ("optim.min_lr", float, "learning rate at the end of the cosine"),
    "--grad-clip": ("optim.grad_clip", float, "max gradient norm (0: off)"),
    "--dropout": ("model.dropout", float, "dropout of the meta MLP and classifier head"),
    "--drop-path-rate": ("model.drop_path_rate", float, "backbone stochastic depth"),
    "--loss": ("loss.name", str, "focal or bce"),
    "--focal-alpha": ("loss.alpha", float, "focal weight on positives (controls: 1 - alpha)"),
    "--focal-gamma": ("loss.gamma", float, "focal focusing parameter"),
    "--early-stopping-patience": ("run.early_stopping_patience", int,
                                  "validations without gain of --monitor before stopping (0: off)"),
    "--monitor": ("run.monitor", str, "val metric of early stopping and best.pt: tpr@fpr1e-4 "
                  "(the seed's), tpr@fpr1e-3 (steadier with few val controls) or auroc"),
    "--num-workers": ("data.num_workers", int, "loader processes per rank"),
    "--seed": ("run.seed", int, "seed of init, dropout, augmentation and shard order"),
    "--samples-per-epoch": ("data.samples_per_epoch", int, "cap on training samples per epoch"),
    "--max-steps-per-epoch": ("data.max_steps_per_epoch", int, "cap on steps per epoch"),
    "--val-every": ("run.val_every", int, "validate every N epochs (and after the last)"),
    "--ckpt-every-steps": ("run.ckpt_every_steps", int, "also write last.pt every N steps (0: off)"),
    "--log-every": ("run.log_every", int, "console/TensorBoard cadence in steps"),
    "--device": ("run.device", str, "auto, cpu, cuda or cuda:N"),
    "--hard-neg-path": ("data.hard_neg_path", str, "checked against the train manifest"),
    "--hard-neg-weight": ("data.hard_neg_weight", int, "checked against the train manifest"),
    "--min-theta-over-psf": ("data.min_theta_over_psf", float, "checked against the manifest"),
    "--norm-method": ("data.norm_method", str, "checked against the train manifest"),
    "--meta-cols": ("model.meta_cols", str, "comma list, checked against the train manifest"),
}  # fmt: skip
# (on flag, off flag) -> (config key, help)
SWITCHES: dict[tuple[str, str | None], tuple[str, str]] = {
    ("--use-bf16", "--no-bf16"): ("run.bf16", "bf16 autocast (default: on for CUDA, off on CPU)"),
    ("--augment", "--no-augment"): ("run.augment", "D4 rot90/flip augmentation on the device"),
    ("--channels-last", "--no-channels-last"): ("run.channels_last", "channels-last memory format"),
    ("--compile", "--no-compile"): ("run.compile", "torch.compile the model"),
    ("--cuda-graphs", "--no-cuda-graphs"): (
        "run.cuda_graphs",
        "capture forward, loss, backward, clip and AdamW in one CUDA graph on CUDA (under "
        "torchrun the gradient all-reduce too, replacing DDP); eager on CPU",
    ),
    ("--resume", None): ("run.resume", "continue from OUT_DIR/last.pt (also mid-epoch)"),
    ("--overwrite", None): ("run.overwrite", "start afresh in an OUT_DIR holding last.pt"),
    ("--tensorboard", None): ("run.tensorboard", "TensorBoard events in OUT_DIR/tb"),
    ("--progress", "--no-progress"): ("run.progress", "tqdm progress bar on rank 0"),
    ("--deterministic", None): ("run.deterministic", "torch deterministic algorithms (debug)"),
}
_DEST = "flag__"
_REQUIRED = ("data.shards", "run.out_dir")
_DESCRIPTION = (
    "Train the lens finder on shards (timm ConvNeXt + meta head, focal loss, DDP via torchrun)."
    "\n\nAny config field can also be set as --section.field=value (e.g. "
    "--optim.betas=0.9,0.95).\nPrecedence: defaults < --preset < --config < flags < "
    "--section.field overrides."
)


def _default(key: str) -> Any:
    section, name = key.split(".")
    sec = next(f for f in fields(TrainConfig) if f.name == section).default_factory()  # type: ignore[misc]
    value = getattr(sec, name)
    return ",".join(value) if isinstance(value, tuple) else value


def build_parser() -> VerbParser:
    """The ``haloscope train`` parser (both spellings of every flag; defaults in --help)."""
    parser = VerbParser("train", _DESCRIPTION)
    parser.add_argument("--config", default=None, help="TOML file with [data] [model] [loss] "
                        "[optim] [run] tables")  # fmt: skip
    parser.add_argument("--preset", default="none", choices=sorted(PRESETS),
                        help="named settings under --config (demo: short CPU run)")  # fmt: skip
    for flag, (key, typ, text) in FLAGS.items():
        default = _default(key)
        shown = "required" if default == "" and key in _REQUIRED else f"default: {default}"
        parser.add_argument(flag, type=typ, default=argparse.SUPPRESS, dest=_DEST + key,
                            metavar=key.split(".")[1].upper(), help=f"{text} [{key}] ({shown})")  # fmt: skip
    for (on, off), (key, text) in SWITCHES.items():
        dest, default = _DEST + key, _default(key)
        parser.add_argument(on, action="store_const", const="true", default=argparse.SUPPRESS,
                            dest=dest, help=f"{text} [{key}] (default: {default})")  # fmt: skip
        if off:
            parser.add_argument(off, action="store_const", const="false", dest=dest,
                                default=argparse.SUPPRESS, help=f"turn {on} off")  # fmt: skip
    return parser


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The given flat flags as ``--section.field=value`` overrides."""
    return [f"--{k[len(_DEST) :]}={v}" for k, v in vars(args).items() if k.startswith(_DEST)]
