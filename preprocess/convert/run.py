"""Orchestration of ``haloscope shards``: work units, tasks, worker processes, resume.

Work directory ``SHARDS/_work/<split>/``: ``p1-<file>.{dat,json}`` (pass-1 bucket parts, one
per input file) and ``p2-<bucket>.json`` (one per written shard). A JSON record is written
last and atomically, so a unit is done exactly when its record exists with the run's
fingerprint (and, for pass 2, the shard's sha256 matches). Units are dealt round-robin to
tasks: task ``t`` of ``T`` runs pass-1 units ``i % T == t``, then pass-2 units likewise;
whichever task finds every record present writes the manifests. Outputs never depend on
``--workers`` or ``--num-tasks``. ``shards/lock.py`` keeps other conversions out of the
output root while this one runs (array tasks share it); the manifest step itself lives in
``preprocess/convert/manifest.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from haloscope.atomic import atomic_write_text
from haloscope.errors import DataError
from haloscope.preprocess.convert import core as cv
from haloscope.preprocess.convert import manifest as cm
from haloscope.preprocess.hardneg import HardNegLookup, load_lookup
from haloscope.preprocess.normalize import norm_settings
from haloscope.preprocess.schema import DatasetLayout, validate_dataset
from haloscope.shards.assemble import meta_stats
from haloscope.shards.buckets import dedup_and_order, load_part_record, read_bucket, row_dtype
from haloscope.shards.lock import MERGE_LOCK_NAME, lock_output, try_lock
from haloscope.shards.manifest import MANIFEST_NAME
from haloscope.shards.schema import SCHEMA_VERSION
from haloscope.shards.write import sha256_file, write_shard

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
            "train_min_arc_snr": cfg.train_min_arc_snr,
            "hard_neg_weight": cfg.hard_neg_weight if lookup else None,
            "hard_neg_lookup_sha256": lookup.sha256 if lookup else None,
            "record_samples": cfg.record_samples,
            "shard_samples": cfg.shard_samples,
        }
        self.sources: dict[str, list[dict]] = {}
        self.num_buckets: dict[str, int] = {}
        for split in cfg.splits:
            extra = (cfg.hard_neg_copies(split) - 1) * lookup.num_rows if lookup else 0
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
        copies = self.cfg.hard_neg_copies(split)
        return _digest(
            [self.settings, split, copies, i, self.num_buckets[split], self.sources[split][i]]
        )

    def p2_fingerprint(self, split: str) -> str:
        copies = self.cfg.hard_neg_copies(split)
        return _digest([self.settings, split, copies, self.num_buckets[split], self.sources[split]])

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
        plan.cfg,
        path,
        i,
        plan.p1_stem(split, i),
        plan.num_buckets[split],
        plan.lookup,
        record,
        hard_neg_weight=plan.cfg.hard_neg_copies(split),
        min_arc_snr=plan.cfg.min_arc_snr(split),
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
        # NOTE: statistics of the unique accepted rows: hard-negative copies (copy > 0) would
        # make them depend on the lookup and --hard-neg-weight, so a Gen4 train split would
        # no longer match the val/test splits it shares with Gen3
        "meta_stats": meta_stats(kept["meta"][kept["table"]["copy"] == 0]),
    }
    atomic_write_text(plan.p2_path(split, b), json.dumps(rec))
    return len(kept)


def _map(fn, jobs: list, workers: int, desc: str, unit: str, progress: bool = True) -> None:
    """Run ``fn`` over ``jobs`` in ``workers`` processes with a progress bar."""
    bar = tqdm(
        total=len(jobs),
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not progress,
    )
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                fn(job)
                bar.update(1)
        else:
            # NOTE: a worker's exception (an OSError naming its file, a HaloscopeError) is
            # re-raised here; leaving the block terminates the other workers, whose
            # temporary files the caller removes (manifest.remove_temporaries)
            with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(fn, jobs):
                    bar.update(1)
    finally:
        bar.close()  # the error line, if any, starts on a line of its own


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


def _pass1(plan: Plan) -> None:
    t, tasks = plan.cfg.task_index, plan.cfg.num_tasks
    jobs = [(plan, s, i) for k, (s, i) in enumerate(plan.p1_units()) if k % tasks == t]
    _map(_run_p1, jobs, plan.cfg.workers, f"pass 1 task {t}", "file", plan.cfg.progress)


def _pass2(plan: Plan) -> None:
    cfg, units = plan.cfg, plan.p1_units()
    t, tasks = cfg.task_index, cfg.num_tasks
    jobs = [(plan, s, b) for k, (s, b) in enumerate(plan.p2_units()) if k % tasks == t]
    if not jobs:  # more tasks than buckets: nothing to wait for (the others may finish and
        return  # remove the pass-1 data before this task would see it complete)
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
    _map(_run_p2, jobs, cfg.workers, f"pass 2 task {t}", "shard", cfg.progress)


def _manifest_step(plan: Plan) -> dict[str, Path]:
    cfg = plan.cfg
    missing = _missing(plan, plan.p2_units(), 2)
    if missing and cfg.stage == "manifest":
        raise DataError(f"{cfg.out / WORK}: pass-2 parts missing for {', '.join(missing[:5])}")
    if missing:
        log.info(
            "task %d done; %d buckets of other tasks pending, the last task writes the manifests",
            cfg.task_index,
            len(missing),
        )
        return {}
    # several array tasks may find every bucket done at once: one writes the manifests
    with try_lock(cfg.out / MERGE_LOCK_NAME) as held:
        if not held:
            log.info("task %d done; another task is writing the manifests", cfg.task_index)
            return {}
        if cfg.num_tasks > 1 and cm.is_up_to_date(plan):
            log.info("task %d done; another task wrote the manifests", cfg.task_index)
            return {}
        return cm.finalise(plan)


def _run_stages(plan: Plan) -> dict[str, Path]:
    cfg = plan.cfg
    if cm.is_up_to_date(plan):
        log.info("%s: shards are up to date with these inputs and settings", cfg.out)
        return {s: cfg.out / s / MANIFEST_NAME for s in cfg.splits}
    cm.drop_stale_manifests(plan)
    for split in cfg.splits:
        plan.work_dir(split).mkdir(parents=True, exist_ok=True)
    try:
        if cfg.stage in ("all", "pass1"):
            _pass1(plan)
        if cfg.stage in ("all", "pass2"):
            _pass2(plan)
        if cfg.stage in ("all", "manifest"):
            return _manifest_step(plan)
    except BaseException:
        if cfg.num_tasks == 1:  # in an array, other tasks' temporaries are still in use
            with contextlib.suppress(OSError):
                cm.remove_temporaries(plan)
        raise
    return {}


def convert(cfg: cv.ConvertConfig) -> dict[str, Path]:
    """Run this task's share of a conversion (everything, for a single task).

    Returns:
        ``split -> manifest path`` when this task wrote the manifests, else ``{}``.

    Raises:
        ContractError: the input violates the contract (layout, columns).
        DataError: unusable lookup, or parts of other tasks missing when needed.
        OutputBusyError: another conversion (or another copy of this task) writes ``--out``.
        OSError: the output cannot be written; it names the file, or ``--out`` when the
            system did not say which (a full disk fails a write, not an open). Temporary
            files are removed and no manifest is written for an unfinished split.
    """
    layout = validate_dataset(cfg.data, cfg.splits, columns=cv.required_columns(cfg))
    lookup = load_lookup(cfg.hard_neg_path) if cfg.hard_neg_path else None
    plan = Plan(cfg, layout, lookup)
    try:
        with lock_output(cfg.out, task_index=cfg.task_index, num_tasks=cfg.num_tasks):
            return _run_stages(plan)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(cfg.out)) from exc
