"""The trainer's view of the shards: locate them, check them against the flags, build readers.

Preprocessing (normalisation, the theta/PSF cut, hard negatives, meta columns) happens once
in ``haloscope shards``; ``train`` only checks that the flags it is given (the seed passes
them to its trainer) agree with the train manifest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from haloscope.errors import ConfigError
from haloscope.shards.manifest import MANIFEST_NAME, Manifest
from haloscope.shards.read import ShardReader, build_loader
from haloscope.train.config import TrainConfig
from haloscope.train.dist import DistEnv
from haloscope.train.model import check_meta_cols

__all__ = ["resolve_shards_root", "check_preprocess", "resolve_meta", "build_readers",
           "steps_per_epoch", "loader_factory", "preprocess_record"]  # fmt: skip

log = logging.getLogger(__name__)
_RUN_SHARDS = "run `haloscope shards --data DATA --out SHARDS` first and pass --shards SHARDS"


def resolve_shards_root(shards: str, data: str | None) -> Path:
    """The shard root from ``--shards`` or the seed's ``--data`` (only if it holds shards).

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
    root = Path(shards)
    for split in ("train", "val"):
        if not (root / split / MANIFEST_NAME).is_file():
            raise ConfigError(f"--shards {root}: no {split}/{MANIFEST_NAME}; {_RUN_SHARDS}")
    return root


def preprocess_record(manifest: Manifest) -> dict[str, Any]:
    """The train manifest's preprocessing settings as stored in checkpoints."""
    return {**manifest.preprocess, "norm": dict(manifest.norm),
            "meta_columns": list(manifest.meta_columns)}  # fmt: skip


def _differs(flag: Any, have: Any) -> bool:
    if isinstance(flag, float) and isinstance(have, (int, float)):
        return not math.isclose(flag, float(have), rel_tol=1e-9, abs_tol=1e-12)
    return flag != have


def _lookup_differs(flag_path: str, lookup: dict[str, Any] | None) -> bool:
    """Whether ``--hard-neg-path`` names another lookup than the one the shards used."""
    if lookup is None:
        return True
    path = Path(flag_path)
    if path.is_file() and lookup.get("sha256"):
        from haloscope.shards.write import sha256_file

        return sha256_file(path) != lookup["sha256"]
    return path.resolve() != Path(str(lookup.get("path"))).resolve()


def check_preprocess(cfg: TrainConfig, manifest: Manifest) -> None:
    """Refuse preprocessing flags that disagree with how the train shards were made.

    Raises:
        ConfigError: naming the flag, both values and the fix (re-run ``haloscope shards``).
    """
    pre, d = manifest.preprocess, cfg.data
    lookup = pre.get("hard_neg_lookup")
    checks: list[tuple[str, Any, Any]] = [
        ("--norm-method", d.norm_method, manifest.norm.get("method")),
        ("--min-theta-over-psf", d.min_theta_over_psf, pre.get("min_theta_over_psf")),
        ("--hard-neg-weight", d.hard_neg_weight, pre.get("hard_neg_weight") if lookup else None),
        ("--meta-cols", None if cfg.model.meta_cols is None else list(cfg.model.meta_cols),
         list(manifest.meta_columns)),
    ]  # fmt: skip
    if d.hard_neg_path is not None and _lookup_differs(d.hard_neg_path, lookup):
        checks.append(
            ("--hard-neg-path", d.hard_neg_path, None if lookup is None else lookup.get("path"))
        )
    for flag, value, have in checks:
        if value is not None and _differs(value, have):
            raise ConfigError(
                f"{flag} {value!r} differs from the train shards ({manifest.split_dir / MANIFEST_NAME}"
                f" has {have!r}); preprocessing is fixed when shards are written: re-run "
                f"`haloscope shards ... {flag} {value}` into a new --out and train on that"
            )


def resolve_meta(
    cfg: TrainConfig, manifest: Manifest
) -> tuple[list[str], list[float], list[float]]:
    """Meta columns (allow-listed) with the train split's mean/std from the manifest."""
    cols = list(check_meta_cols(manifest.meta_columns))
    return cols, [float(v) for v in manifest.meta_mean], [float(v) for v in manifest.meta_std]


def build_readers(cfg: TrainConfig, env: DistEnv, root: Path) -> tuple[ShardReader, ShardReader]:
    """Train reader (shuffled, drop_last) and val reader (exact, padded) of this rank."""
    common = {"seed": cfg.run.seed, "rank": env.rank, "world_size": env.world_size}
    train = ShardReader(root / "train", batch_size=cfg.data.per_rank_batch(env.world_size),
                        shuffle=True, drop_last=True, **common)  # fmt: skip
    val = ShardReader(root / "val", batch_size=cfg.data.per_rank_batch(env.world_size, val=True),
                      shuffle=False, drop_last=False, **common)  # fmt: skip
    if val.manifest.meta_columns != train.manifest.meta_columns:
        raise ConfigError(f"--shards {root}: val meta columns {val.manifest.meta_columns} differ "
                          f"from train {train.manifest.meta_columns}; {_RUN_SHARDS}")  # fmt: skip
    return train, val


def steps_per_epoch(cfg: TrainConfig, batches_per_rank: int) -> int:
    """Optimiser steps per epoch: the reader's batches, capped by the epoch-size flags."""
    steps = batches_per_rank
    if cfg.data.samples_per_epoch is not None:
        steps = min(steps, max(1, cfg.data.samples_per_epoch // cfg.data.batch_size))
    if cfg.data.max_steps_per_epoch is not None:
        steps = min(steps, cfg.data.max_steps_per_epoch)
    return steps


def loader_factory(cfg: TrainConfig, env: DistEnv) -> Callable[[Any], Iterable[dict[str, Any]]]:
    """``reader -> iterable of batches`` with the configured workers (pinned on CUDA)."""

    def make(reader: Any) -> Iterable[dict[str, Any]]:
        return build_loader(reader, num_workers=cfg.data.num_workers,
                            pin_memory=env.device.type == "cuda")  # fmt: skip

    return make
