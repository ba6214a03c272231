"""One scoring run: checkpoint + (shards | parquet) -> scores parquet, on one or many ranks.

Order: start the process group (``train.dist``), load the checkpoint, refuse data whose
preprocessing differs from the checkpoint's, score this rank's disjoint part, gather the
per-rank tables on rank 0, which sorts and writes one parquet atomically.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from haloscope import __version__
from haloscope.atomic import check_writable
from haloscope.errors import CheckpointError
from haloscope.infer import predict, sources, table
from haloscope.infer.config import InferConfig
from haloscope.log import setup_logging
from haloscope.preprocess.normalize import NORM_METHODS
from haloscope.preprocess.schema import split_files, validate_dataset
from haloscope.shards.manifest import check_compatible, load_manifest
from haloscope.shards.read import ShardReader, build_loader
from haloscope.shards.remote import split_location
from haloscope.train.checkpoint import load_for_inference
from haloscope.train.dist import all_gather_1d, init_distributed, shutdown
from haloscope.train.failures import worker_batches

__all__ = ["checkpoint_settings", "run_inference"]

log = logging.getLogger(__name__)


def checkpoint_settings(info: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a checkpoint was trained with: norm method, meta columns, cut.

    Args:
        info: the ``info`` dict of ``train.checkpoint.load_for_inference``.

    Raises:
        CheckpointError: the checkpoint does not record them.
    """
    pre = info.get("preprocess") or {}
    norm = pre.get("norm") if isinstance(pre.get("norm"), dict) else {}
    method = norm.get("method", pre.get("norm_method"))
    cut = pre.get("min_theta_over_psf")
    if method is None or cut is None:
        raise CheckpointError(
            f"checkpoint {info.get('path')}: no recorded norm method / min_theta_over_psf in "
            f"its preprocess settings ({sorted(pre)}); was it written by `haloscope train`?"
        )
    settings = {
        "norm_method": method,
        "meta_columns": list(info["meta_cols"]),
        "min_theta_over_psf": float(cut),
        "stamp_px": int(pre.get("stamp_px", 64)),
    }
    return {**settings, "norm": norm} if norm else settings


def _check_shards(cfg: InferConfig, settings: dict[str, Any]):
    manifest = load_manifest(split_location(cfg.shards) / cfg.split)
    check_compatible(manifest, settings, against=f"checkpoint {cfg.ckpt}")
    return manifest


def _check_parquet(cfg: InferConfig, settings: dict[str, Any]) -> tuple[list[Path], int]:
    if settings["norm_method"] not in NORM_METHODS:
        raise CheckpointError(
            f"checkpoint {cfg.ckpt} was trained with norm method {settings['norm_method']!r}; "
            f"the parquet path implements {list(NORM_METHODS)}"
        )
    layout = validate_dataset(cfg.data, splits=(cfg.split,))
    files = split_files(Path(cfg.data), cfg.split)
    for path in files:
        names = set(pq.read_schema(path).names)
        missing = [c for c in settings["meta_columns"] if c not in names]
        if missing:
            raise CheckpointError(
                f"checkpoint {cfg.ckpt} needs meta column(s) {missing}, absent from {path}"
            )
    return files, layout.num_rows[cfg.split]


def _batches(cfg: InferConfig, env, settings: dict[str, Any], stats: sources.SourceStats):
    """This rank's ScoreBatch iterator and the expected number of rows (for the bar)."""
    if cfg.source_kind == "parquet":
        files, num_rows = _check_parquet(cfg, settings)
        it = sources.iter_parquet_batches(
            files,
            meta_cols=settings["meta_columns"],
            min_theta_over_psf=settings["min_theta_over_psf"],
            batch_size=cfg.per_rank_batch(env.world_size),
            rank=env.rank,
            world_size=env.world_size,
            num_workers=cfg.num_workers,
            stats=stats,
            norm_method=settings["norm_method"],
        )
        return it, num_rows // env.world_size
    manifest = _check_shards(cfg, settings)
    reader = ShardReader(
        manifest.split_dir,
        batch_size=cfg.per_rank_batch(env.world_size),
        seed=0,
        rank=env.rank,
        world_size=env.world_size,
        shuffle=False,
        drop_last=False,
        with_table=True,
        cache_dir=cfg.cache_dir,
    )
    log.info(
        "shards %s: %d samples, %d batches per rank",
        manifest.split_dir,
        manifest.num_samples,
        reader.batches_per_rank(),
    )
    loader = build_loader(reader, num_workers=cfg.num_workers, pin_memory=env.device.type == "cuda")
    batches = worker_batches(iter(loader))  # a worker's error as one line
    return sources.iter_shard_batches(batches, stats=stats), manifest.num_samples // env.world_size


def _load_model(cfg: InferConfig, env):
    model, info = load_for_inference(cfg.ckpt, env.device)
    if env.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, info


def _metadata(cfg: InferConfig, env, info, stats: Counter, use_bf16: bool, wall_s: float) -> dict:
    # NOTE: the eval report finds the run (and its curves.png) next to the checkpoint
    return {
        "haloscope_version": __version__,
        "checkpoint": str(cfg.ckpt),
        "checkpoint_resolved": str(Path(cfg.ckpt).resolve()),
        "source": str(cfg.shards if cfg.shards is not None else cfg.data),
        "source_kind": cfg.source_kind,
        "split": cfg.split,
        "tta": str(cfg.tta),
        "precision": "bf16-autocast+fp32-logit" if use_bf16 else "fp32",
        "step": cfg.step,
        "world_size": str(env.world_size),
        "batch_size": str(cfg.batch_size),
        "rejected": json.dumps(dict(stats)),
        "arch": str(info.get("arch")),
        "wall_s": f"{wall_s:.3f}",
    }


def _gather_stats(stats: sources.SourceStats, env) -> Counter:
    """Rows read/kept and rejections summed over ranks (every rank must call this)."""
    keys = list(sources.REJECT_KEYS)  # the same fixed order on every rank
    values = [stats.rows_read, stats.rows_kept] + [stats.rejected.get(k, 0) for k in keys]
    local = torch.tensor(values, dtype=torch.int64)
    total = all_gather_1d(local, env).reshape(env.world_size, -1).sum(0).tolist()
    out = Counter({"rows_read": total[0], "rows_kept": total[1]})
    out.update({k: v for k, v in zip(keys, total[2:], strict=True) if v})
    return out


def _log_written(
    cfg: InferConfig, env, path: Path, num_rows: int, counts: Counter, wall_s: float
) -> None:
    log.info(
        "wrote %s: %d rows (%s) in %.1f s, %.0f img/s over %d rank(s)%s",
        path,
        num_rows,
        ", ".join(f"{k}={v}" for k, v in sorted(counts.items())),
        wall_s,
        num_rows / max(wall_s, 1e-9),
        env.world_size,
        " with D4 TTA" if cfg.tta else "",
    )


def run_inference(cfg: InferConfig) -> Path | None:
    """Score ``cfg.split`` and write ``cfg.out`` (rank 0 only).

    Args:
        cfg: the validated configuration.

    Returns:
        The written path on rank 0, None on other ranks.

    Raises:
        CheckpointError: unreadable checkpoint, or parquet it cannot score (meta column,
            norm method).
        DataError: shards made with other preprocessing than the checkpoint's
            (``shards.manifest.check_compatible``), or unreadable shards.
        ContractError: unreadable parquet.
    """
    env = init_distributed(cfg.device)
    setup_logging(env.rank)
    try:
        cfg.per_rank_batch(env.world_size)  # a global batch that does not divide: fail now
        if env.is_main:  # an unwritable --out fails now, not after the scoring
            check_writable(cfg.out)
        model, info = _load_model(cfg, env)
        t0 = time.perf_counter()
        settings = checkpoint_settings(info)
        use_bf16 = cfg.use_bf16(env.device.type)
        forward = predict.make_forward(
            model,
            env.device,
            use_bf16,
            step=cfg.step,
            batch_size=cfg.per_rank_batch(env.world_size),
        )
        stats = sources.SourceStats()
        batches, expected = _batches(cfg, env, settings, stats)
        parts = predict.score_batches(
            forward,
            batches,
            env.device,
            tta=cfg.tta,
            progress=cfg.progress and env.is_main,
            total_rows=expected,
        )
        local = table.build_scores_table(parts, split=cfg.split, model=cfg.resolved_model_name())
        counts = _gather_stats(stats, env)
        gathered = table.gather_tables(local, env)
        if gathered is None:
            return None
        scores = table.concat_tables(gathered)
        wall_s = time.perf_counter() - t0  # scoring incl. decoding, not model loading
        meta = _metadata(cfg, env, info, counts, use_bf16, wall_s)
        path = table.write_scores(scores, cfg.out, metadata=meta)
        _log_written(cfg, env, path, scores.num_rows, counts, wall_s)
        return path
    finally:
        shutdown(env)
