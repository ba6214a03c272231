"""Orchestration of ``haloscope shards``: work units, tasks, worker processes, resume.

Work directory ``SHARDS/_work/<split>/``: ``p1-<file>.{dat,json}`` (pass-1 bucket parts, one
per input file) and ``p2-<bucket>.json`` (one per written shard). A JSON record is written
last and atomically, so a unit is done exactly when its record exists with the run's
fingerprint (and, for pass 2, the shard's sha256 matches). Units are dealt round-robin to
tasks: task ``t`` of ``T`` runs pass-1 units ``i % T == t``, then pass-2 units likewise;
whichever task finds every record present writes the manifests. Outputs never depend on
``--workers`` or ``--num-tasks``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from haloscope.errors import DataError
from haloscope.preprocess import convert as cv
from haloscope.preprocess.hardneg import HardNegLookup, load_lookup
from haloscope.preprocess.normalize import norm_settings
from haloscope.preprocess.schema import DatasetLayout, validate_dataset
from haloscope.shards.assemble import assemble_split, combine_stats, finish_stats, meta_stats
from haloscope.shards.buckets import dedup_and_order, load_part_record, read_bucket, row_dtype
from haloscope.shards.manifest import MANIFEST_NAME
from haloscope.shards.schema import SCHEMA_VERSION
from haloscope.shards.write import atomic_write_bytes, sha256_file, write_shard

__all__ = ["convert", "Plan"]

log = logging.getLogger(__name__)
WORK = "_work"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Plan:
    """Everything fixed before work starts: files, buckets and fingerprints per split."""

    def __init__(self, cfg: cv.ConvertConfig, layout: DatasetLayout, lookup: HardNegLookup | None):
        self.cfg, self.layout, self.lookup = cfg, layout, lookup
        self.settings = {
            "schema_version": SCHEMA_VERSION,
            "seed": cfg.seed,
            "norm": norm_settings(cfg.norm_method),
            "meta_cols": list(cfg.meta_cols),
            "min_theta_over_psf": cfg.min_theta_over_psf,
            "hard_neg_weight": cfg.hard_neg_weight if lookup else None,
            "hard_neg_lookup_sha256": lookup.sha256 if lookup else None,
            "record_samples": cfg.record_samples,
            "shard_samples": cfg.shard_samples,
        }
        self.sources: dict[str, list[dict]] = {}
        self.num_buckets: dict[str, int] = {}
        extra = (cfg.hard_neg_weight - 1) * lookup.num_rows if lookup else 0
        for split in cfg.splits:
            srcs = []
            for path in layout.files[split]:
                st = path.stat()
                srcs.append(
                    {
                        "path": str(path.relative_to(layout.root)),
                        "bytes": st.st_size,
                        "mtime_ns": st.st_mtime_ns,
                    }
                )
            self.sources[split] = srcs
            est = layout.num_rows[split] + extra
            self.num_buckets[split] = max(1, -(-est // cfg.shard_samples))

    def work_dir(self, split: str) -> Path:
        return self.cfg.out / WORK / split

    def p1_units(self) -> list[tuple[str, int]]:
        return [(s, i) for s in self.cfg.splits for i in range(len(self.layout.files[s]))]

    def p2_units(self) -> list[tuple[str, int]]:
        return [(s, b) for s in self.cfg.splits for b in range(self.num_buckets[s])]

    def p1_fingerprint(self, split: str, i: int) -> str:
        return _digest([self.settings, split, i, self.num_buckets[split], self.sources[split][i]])

    def p2_fingerprint(self, split: str) -> str:
        return _digest([self.settings, split, self.num_buckets[split], self.sources[split]])

    def p1_stem(self, split: str, i: int) -> Path:
        return self.work_dir(split) / f"p1-{i:05d}"

    def p2_path(self, split: str, b: int) -> Path:
        return self.work_dir(split) / f"p2-{b:06d}.json"

    def p1_record(self, split: str, i: int) -> dict | None:
        rec = load_part_record(self.p1_stem(split, i))
        return rec if rec and rec.get("fingerprint") == self.p1_fingerprint(split, i) else None

    def p2_record(self, split: str, b: int, check_sha: bool = False) -> dict | None:
        path = self.p2_path(split, b)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if rec.get("fingerprint") != self.p2_fingerprint(split):
            return None
        shard = rec.get("shard")
        if shard and check_sha:
            tar = self.cfg.out / split / shard["file"]
            if not tar.exists() or sha256_file(tar) != shard["sha256"]:
                return None
        return rec


def _run_p1(job: tuple[Plan, str, int]) -> int:
    plan, split, i = job
    if plan.p1_record(split, i) is not None:
        return 0
    path = plan.layout.files[split][i]
    record = {"fingerprint": plan.p1_fingerprint(split, i), "source": plan.sources[split][i]}
    rec = cv.convert_file(
        plan.cfg, path, i, plan.p1_stem(split, i), plan.num_buckets[split], plan.lookup, record
    )
    return rec["input_rows"]


def _run_p2(job: tuple[Plan, str, int]) -> int:
    plan, split, b = job
    if plan.p2_record(split, b, check_sha=True) is not None:
        return 0
    parts = [
        (plan.p1_stem(split, i), plan.p1_record(split, i))
        for i in range(len(plan.layout.files[split]))
    ]
    rows = read_bucket(parts, b, row_dtype(len(plan.cfg.meta_cols)))
    kept, dups = dedup_and_order(rows)
    del rows
    shard = None
    if len(kept):
        (plan.cfg.out / split).mkdir(parents=True, exist_ok=True)
        shard = write_shard(
            plan.cfg.out / split / f"shard-{b:06d}.tar",
            kept["image"],
            kept["meta"],
            kept["table"],
            plan.cfg.record_samples,
        ).to_json()
    rec = {
        "fingerprint": plan.p2_fingerprint(split),
        "bucket": b,
        "shard": shard,
        "duplicates": dups,
        "meta_stats": meta_stats(kept["meta"]),
    }
    atomic_write_bytes(plan.p2_path(split, b), json.dumps(rec).encode())
    return len(kept)


def _map(fn, jobs: list, workers: int, desc: str, unit: str) -> None:
    """Run ``fn`` over ``jobs`` in ``workers`` processes with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            fn(job)
            bar.update(1)
    else:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(fn, jobs):
                bar.update(1)
    bar.close()


def _wait_for(check, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise DataError(
                f"timed out after {timeout_s:.0f} s waiting for {what} "
                "(did every --task-index run?)"
            )
        time.sleep(5.0)


def _missing(plan: Plan, units: list[tuple[str, int]], pass_no: int) -> list[str]:
    get = plan.p1_record if pass_no == 1 else plan.p2_record
    return [f"{s}/{i}" for s, i in units if get(s, i) is None]


def _train_meta(plan: Plan) -> dict[str, Any]:
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


def _manifest_doc(plan: Plan, split: str, meta: dict[str, Any]) -> dict[str, Any]:
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


def _finalise(plan: Plan) -> dict[str, Path]:
    meta = _train_meta(plan)
    out = {}
    for split in plan.cfg.splits:
        recs = [plan.p2_record(split, b) for b in range(plan.num_buckets[split])]
        doc = _manifest_doc(plan, split, meta)
        out[split] = assemble_split(
            plan.cfg.out / split, doc, recs, len(plan.cfg.meta_cols), with_zarr=split != "train"
        )
    for split in plan.cfg.splits:  # temporaries of killed runs (all work is done now)
        for d in (plan.work_dir(split), plan.cfg.out / split):
            for tmp in d.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)
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


def _up_to_date(plan: Plan) -> bool:
    for split in plan.cfg.splits:
        try:
            doc = json.loads((plan.cfg.out / split / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            return False
        if doc.get("fingerprint") != plan.p2_fingerprint(split):
            return False
        for s in doc.get("shards", []):
            tar = plan.cfg.out / split / s["file"]
            if (
                not tar.exists()
                or tar.stat().st_size != s["bytes"]
                or sha256_file(tar) != s["sha256"]
            ):
                return False
    return True


def convert(cfg: cv.ConvertConfig) -> dict[str, Path]:
    """Run this task's share of a conversion (everything, for a single task).

    Returns:
        ``split -> manifest path`` when this task wrote the manifests, else ``{}``.

    Raises:
        ContractError: the input violates the contract (layout, columns).
        DataError: unusable lookup, or parts of other tasks missing when needed.
    """
    layout = validate_dataset(cfg.data, cfg.splits, columns=cv.required_columns(cfg))
    lookup = load_lookup(cfg.hard_neg_path) if cfg.hard_neg_path else None
    plan = Plan(cfg, layout, lookup)
    if _up_to_date(plan):
        log.info("%s: shards are up to date with these inputs and settings", cfg.out)
        return {s: cfg.out / s / MANIFEST_NAME for s in cfg.splits}
    for split in cfg.splits:
        plan.work_dir(split).mkdir(parents=True, exist_ok=True)
    t, tasks = cfg.task_index, cfg.num_tasks
    if cfg.stage in ("all", "pass1"):
        jobs = [(plan, s, i) for k, (s, i) in enumerate(plan.p1_units()) if k % tasks == t]
        _map(_run_p1, jobs, cfg.workers, f"pass 1 task {t}", "file")
    if cfg.stage in ("all", "pass2"):
        units = plan.p1_units()
        if cfg.stage == "all" and tasks > 1:
            _wait_for(
                lambda: not _missing(plan, units, 1),
                "the pass-1 parts of every task",
                cfg.wait_timeout_s,
            )
        missing = _missing(plan, units, 1)
        if missing:
            raise DataError(
                f"{cfg.out / WORK}: pass-1 parts missing for {', '.join(missing[:5])}"
                " (run --stage pass1 for every task first)"
            )
        jobs = [(plan, s, b) for k, (s, b) in enumerate(plan.p2_units()) if k % tasks == t]
        _map(_run_p2, jobs, cfg.workers, f"pass 2 task {t}", "shard")
    if cfg.stage in ("all", "manifest"):
        missing = _missing(plan, plan.p2_units(), 2)
        if not missing:
            return _finalise(plan)
        if cfg.stage == "manifest":
            raise DataError(f"{cfg.out / WORK}: pass-2 parts missing for {', '.join(missing[:5])}")
        log.info(
            "task %d done; %d buckets of other tasks pending, the last task writes the manifests",
            t,
            len(missing),
        )
    return {}
