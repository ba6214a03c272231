"""Helpers of the trainer tests: tiny learnable shards (via the shards writer), tiny runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from haloscope.shards.manifest import build_manifest, write_manifest
from haloscope.shards.schema import TABLE_DTYPE
from haloscope.shards.write import write_shard

META_COLS = ["psfsize_r", "psfdepth_r"]


def make_split(
    split_dir: Path,
    num: int,
    seed: int,
    *,
    split: str,
    pos_frac: float = 0.3,
    record_samples: int = 16,
    num_shards: int = 2,
) -> None:
    """Write ``num`` samples: lenses carry a ring at radius ~10 px, controls only noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(num) < pos_frac).astype(np.uint8)
    yy, xx = np.mgrid[:64, :64]
    ring = np.exp(-((np.hypot(yy - 32, xx - 32) - 10.0) ** 2) / 4.0).astype(np.float32)
    image = rng.normal(0, 1, (num, 3, 64, 64)).astype(np.float32)
    image += 3.0 * labels[:, None, None, None] * ring
    meta = np.stack([rng.normal(1.3, 0.2, num), rng.normal(24.5, 0.5, num)], 1).astype(np.float32)
    table = np.zeros(num, dtype=TABLE_DTYPE)
    table["label"] = labels
    table["ra"], table["dec"] = rng.uniform(0, 360, num), rng.uniform(-10, 10, num)
    table["task_id"] = [f"{split}-{i}".encode() for i in range(num)]
    split_dir.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, num, num_shards + 1).astype(int)
    infos = []
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        infos.append(
            write_shard(
                split_dir / f"shard-{s:06d}.tar",
                image[lo:hi].astype(np.float16),
                meta[lo:hi],
                table[lo:hi],
                record_samples,
            )
        )
    write_manifest(
        split_dir,
        build_manifest(
            split=split,
            shards=[i.to_json() for i in infos],
            counts={"lens": int(labels.sum()), "control": int(num - labels.sum())},
            rejected={},
            norm={"method": "outer", "clip": 10.0},
            meta={"columns": META_COLS, "mean": [1.3, 24.5], "std": [0.2, 0.5]},
            preprocess={
                "min_theta_over_psf": 0.5,
                "hard_neg_lookup": None,
                "hard_neg_weight": None,
                "stamp_px": 64,
            },
            record_samples=record_samples,
        ),
    )


def make_shards(root: Path, num_train: int = 96, num_val: int = 64, seed: int = 0) -> Path:
    """A shard root with train/ and val/ splits."""
    make_split(root / "train", num_train, seed, split="train")
    make_split(root / "val", num_val, seed + 1, split="val", pos_frac=0.4)
    return root


def tiny_argv(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    """Flags of a few-second CPU run with convnext_atto."""
    return ["--shards", str(shards), "--out-dir", str(out_dir), "--arch", "convnext_atto",
            "--batch-size", "16", "--val-batch-size", "32", "--epochs", "2", "--num-workers", "0",
            "--device", "cpu", "--no-progress", "--warmup-steps", "2", "--seed", "3", *extra]  # fmt: skip
