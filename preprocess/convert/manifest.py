"""The manifest step of ``haloscope shards`` and what decides whether a run has work to do.

``finalise`` runs once every pass-2 bucket record of every split exists: train-split meta
statistics, one manifest per split (``shards/assemble.py``, zarr store for val/test), then
clean-up of temporaries, stale shards and pass-1 data. ``is_up_to_date`` says whether the
output already matches the inputs and settings (fingerprint, shard sha256, zarr metadata).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haloscope.atomic import is_temp_name
from haloscope.errors import DataError
from haloscope.preprocess.normalize import norm_settings
from haloscope.shards.assemble import assemble_split, combine_stats, finish_stats
from haloscope.shards.manifest import MANIFEST_NAME
from haloscope.shards.verify import verify_zarr
from haloscope.shards.write import sha256_file

if TYPE_CHECKING:
    from haloscope.preprocess.convert.run import Plan

__all__ = [
    "drop_stale_manifests",
    "finalise",
    "is_up_to_date",
    "manifest_doc",
    "read_manifest",
    "remove_temporaries",
    "train_meta",
]

log = logging.getLogger(__name__)


def train_meta(plan: Plan) -> dict[str, Any]:
    """Meta mean/std of the train split: from this run's buckets or an existing manifest."""
    cols = list(plan.cfg.meta_cols)
    if "train" in plan.cfg.splits:
        recs = [plan.p2_record("train", b) for b in range(plan.num_buckets["train"])]
        stats = combine_stats([r["meta_stats"] for r in recs], len(cols))
        mean, std = finish_stats(stats)
        return {
            "columns": cols,
            "mean": mean,
            "std": std,
            "stats_split": "train",
            "stats_count": stats["count"],
        }
    path = plan.cfg.out / "train" / MANIFEST_NAME
    try:
        meta = json.loads(path.read_text())["meta"]
    except (OSError, ValueError, KeyError):
        raise DataError(
            f"{path}: meta statistics come from the train split; convert train "
            "first or include it in --splits"
        ) from None
    if meta["columns"] != cols:
        raise DataError(
            f"{path}: train shards have meta columns {meta['columns']}, this run "
            f"asks for {cols}; use the same --meta-cols"
        )
    return meta


def manifest_doc(plan: Plan, split: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``shards.manifest.build_manifest`` arguments known before assembly: counts,
    rejects, settings, sources (``shards.assemble.assemble_split`` adds the shards)."""
    cfg = plan.cfg
    rejected, counts, files = Counter(), Counter(), []
    for i, src in enumerate(plan.sources[split]):
        rec = plan.p1_record(split, i)
        rejected.update(rec["rejected"])
        counts.update(rec["counts"])
        counts["input_rows"] += rec["input_rows"]
        files.append({**src, "rows": rec["input_rows"]})
    preprocess = {
        "min_theta_over_psf": cfg.min_theta_over_psf,
        "resolvability_cut": "positives of every split",
        "hard_neg_weight": cfg.hard_neg_weight if plan.lookup else None,
        "hard_neg_copies": cfg.hard_neg_copies(split),
        "min_arc_snr": cfg.min_arc_snr(split),
        "hard_neg_lookup": plan.lookup.provenance() if plan.lookup else None,
        "dedup": "blake2b-128 of the raw float32 stamp; first row in input order kept",
        "seed": cfg.seed,
        "num_buckets": plan.num_buckets[split],
        "shard_samples": cfg.shard_samples,
        "stamp_px": 64,
        "bands": "grz",
        "image_dtype": "float16",
    }
    return {
        "split": split,
        "record_samples": cfg.record_samples,
        "counts": dict(sorted(counts.items())),
        "rejected": dict(sorted(rejected.items())),
        "norm": norm_settings(cfg.norm_method),
        "meta": meta,
        "preprocess": preprocess,
        "sources": {"data_root": str(cfg.data), "files": files},
        "command": list(cfg.command),
        "fingerprint": plan.p2_fingerprint(split),
    }


def remove_temporaries(plan: Plan) -> None:
    """Remove temporary files and folders (``.NAME.<random>.tmp``) of killed or failed runs."""
    for split in plan.cfg.splits:
        for folder in (plan.work_dir(split), plan.cfg.out / split):
            for tmp in folder.glob(".*"):
                if not is_temp_name(tmp.name):
                    continue
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)


def finalise(plan: Plan) -> dict[str, Path]:
    """Write every split's manifest (and zarr store), then clean up; ``split -> manifest``."""
    meta = train_meta(plan)
    out = {}
    for split in plan.cfg.splits:
        recs = [plan.p2_record(split, b) for b in range(plan.num_buckets[split])]
        doc = manifest_doc(plan, split, meta)
        out[split] = assemble_split(
            plan.cfg.out / split, doc, recs, len(plan.cfg.meta_cols), with_zarr=split != "train"
        )
    remove_temporaries(plan)  # all work is done now
    for split in plan.cfg.splits:
        listed = {s["file"] for s in json.loads(out[split].read_text())["shards"]}
        for stale in (plan.cfg.out / split).glob("shard-*.tar"):  # from earlier settings
            if stale.name not in listed:
                log.warning("%s: not in the new manifest, removed", stale)
                stale.unlink()
    if not plan.cfg.keep_work:
        for split in plan.cfg.splits:
            for dat in plan.work_dir(split).glob("p1-*.dat"):
                dat.unlink(missing_ok=True)
    return out


def read_manifest(plan: Plan, split: str) -> dict[str, Any] | None:
    """The split's manifest as JSON, or None if missing or unreadable."""
    try:
        return json.loads((plan.cfg.out / split / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(plan: Plan) -> bool:
    """Whether every split's manifest, shards and zarr store match this run's inputs."""
    for split in plan.cfg.splits:
        doc = read_manifest(plan, split)
        if doc is None or doc.get("fingerprint") != plan.p2_fingerprint(split):
            return False
        for s in doc.get("shards", []):
            tar = plan.cfg.out / split / s["file"]
            if (
                not tar.exists()
                or tar.stat().st_size != s["bytes"]
                or sha256_file(tar) != s["sha256"]
            ):
                return False
        if doc.get("zarr"):
            try:
                verify_zarr(plan.cfg.out / split / doc["zarr"], doc.get("num_samples", -1))
            except DataError:
                return False
    return True


def drop_stale_manifests(plan: Plan) -> None:
    """Remove manifests of other inputs or settings: their shards are about to be replaced."""
    for split in plan.cfg.splits:
        doc = read_manifest(plan, split)
        if doc is not None and doc.get("fingerprint") != plan.p2_fingerprint(split):
            log.info(
                "%s: from other inputs or settings, removed", plan.cfg.out / split / MANIFEST_NAME
            )
            (plan.cfg.out / split / MANIFEST_NAME).unlink(missing_ok=True)
