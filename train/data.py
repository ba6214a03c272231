"""The trainer's view of the shards: locate them, check them against the flags, build readers.

Preprocessing (normalisation, the theta/PSF cut, hard negatives, meta columns) happens once
in ``haloscope shards``; ``train`` only checks that the flags it is given (the seed passes
them to its trainer) agree with the train manifest, and that val was made like train.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haloscope.errors import ConfigError
from haloscope.preprocess.convert.unlabelled import check_labelled
from haloscope.shards.manifest import MANIFEST_NAME, Manifest, check_compatible
from haloscope.shards.read import ShardLoader, ShardReader, build_loader
from haloscope.shards.remote import RemotePath, split_location
from haloscope.train.config import TrainConfig
from haloscope.train.dist import DistEnv
from haloscope.train.model import check_meta_cols

__all__ = [
    "resolve_shards_root",
    "check_splits",
    "resolve_meta",
    "build_readers",
    "steps_per_epoch",
    "loader_factory",
    "preprocess_record",
]

log = logging.getLogger(__name__)
_RUN_SHARDS = "run `haloscope shards --data DATA --out SHARDS` first and pass --shards SHARDS"


def resolve_shards_root(shards: str, data: str | None) -> Path | RemotePath:
    """The shard root from ``--shards`` (a folder or a URL) or the seed's ``--data`` (only
    if it holds shards). A URL's manifests are checked when its readers read them.

    Raises:
        ConfigError: neither given, ``--data`` is a parquet root, or the root lacks
            ``train/manifest.json`` and ``val/manifest.json``.
    """
    if data:
        if not (Path(data) / "train" / MANIFEST_NAME).is_file():
            raise ConfigError(
                f"--data {data} is not a shard root (no train/{MANIFEST_NAME}): in haloscope "
                f"--data is the parquet root of `haloscope shards`; {_RUN_SHARDS}"
            )
        if shards and Path(shards).resolve() != Path(data).resolve():
            raise ConfigError(f"--data {data} and --shards {shards} disagree; pass only --shards")
        shards = data
    if not shards:
        raise ConfigError(f"--shards is required: {_RUN_SHARDS}")
    root = split_location(shards)
    if not isinstance(root, Path):  # a URL: its readers read the manifests first
        return root
    check_labelled(root)  # shards of `haloscope shards --unlabelled`: one clear line
    for split in ("train", "val"):
        if not (root / split / MANIFEST_NAME).is_file():
            raise ConfigError(f"--shards {root}: no {split}/{MANIFEST_NAME}; {_RUN_SHARDS}")
    return root


def preprocess_record(manifest: Manifest) -> dict[str, Any]:
    """The train manifest's preprocessing settings as stored in checkpoints."""
    return {
        **manifest.preprocess,
        "norm": dict(manifest.norm),
        "meta_columns": list(manifest.meta_columns),
    }


def check_splits(cfg: TrainConfig, train: Manifest, val: Manifest) -> None:
    """Refuse preprocessing flags that disagree with the train shards, and a val split made
    otherwise than the train split (``shards.manifest.check_compatible``, the rule infer uses).

    Preprocessing is fixed when shards are written; the seed passes its preprocessing flags to
    its trainer, so given flags must agree with the train manifest (absent flags are not checked).

    Raises:
        DataError: naming the manifest, the setting, both values and the fix.
    """
    d, cols = cfg.data, cfg.model.meta_cols
    flags = {
        "norm_method": d.norm_method,
        "min_theta_over_psf": d.min_theta_over_psf,
        "hard_neg_weight": d.hard_neg_weight,
        "hard_neg_lookup": d.hard_neg_path,
        "meta_columns": None if cols is None else list(cols),
    }
    given = {k: v for k, v in flags.items() if v is not None}
    check_compatible(train, given, against="the command line")
    check_compatible(val, train, against=f"the train split ({train.split_dir / MANIFEST_NAME})")


def resolve_meta(
    cfg: TrainConfig, manifest: Manifest
) -> tuple[list[str], list[float], list[float]]:
    """Meta columns (allow-listed) with the train split's mean/std from the manifest."""
    cols = list(check_meta_cols(manifest.meta_columns))
    return cols, [float(v) for v in manifest.meta_mean], [float(v) for v in manifest.meta_std]


def build_readers(
    cfg: TrainConfig, env: DistEnv, root: Path | RemotePath
) -> tuple[ShardReader, ShardReader]:
    """Train reader (shuffled, drop_last) and val reader (exact, padded) of this rank."""
    common = {
        "seed": cfg.run.seed,
        "rank": env.rank,
        "world_size": env.world_size,
        "cache_dir": cfg.data.cache_dir,
    }
    train = ShardReader(
        root / "train",
        batch_size=cfg.data.per_rank_batch(env.world_size),
        shuffle=True,
        drop_last=True,
        **common,
    )
    # the val batches carry the per-sample table: validation reports the detectable subset
    val = ShardReader(
        root / "val",
        batch_size=cfg.data.per_rank_batch(env.world_size, val=True),
        shuffle=False,
        drop_last=False,
        with_table=True,
        **common,
    )
    return train, val


def steps_per_epoch(cfg: TrainConfig, batches_per_rank: int) -> int:
    """Optimiser steps per epoch: the reader's batches, capped by the epoch-size flags."""
    steps = batches_per_rank
    if cfg.data.samples_per_epoch is not None:
        steps = min(steps, max(1, cfg.data.samples_per_epoch // cfg.data.batch_size))
    if cfg.data.max_steps_per_epoch is not None:
        steps = min(steps, cfg.data.max_steps_per_epoch)
    return steps


def loader_factory(cfg: TrainConfig, env: DistEnv) -> Callable[[ShardReader], ShardLoader]:
    """``reader -> iterable of batches`` with the configured workers (pinned on CUDA)."""

    def make(reader: ShardReader) -> ShardLoader:
        return build_loader(
            reader, num_workers=cfg.data.num_workers, pin_memory=env.device.type == "cuda"
        )

    return make
