"""The mock DR10 survey: chunks of galaxies -> rendered stamps -> brick-sorted hive parquet.

Work is split into fixed-size chunks (``CHUNK_ROWS`` rows, its own sky regions, RNG
``default_rng([seed, chunk])``), so the bytes written depend on the seed only, never on
``--workers``. Each chunk renders its unique images in batches, encodes each image once and
reuses the bytes for all rows of that galaxy (controls: every row; positives: per replicate),
builds the batch's rows column by column (``rows``) and streams them into one part file per
split, so memory stays bounded at any survey size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from haloscope.atomic import atomic_write_text, is_temp_name
from haloscope.errors import ConfigError
from haloscope.preprocess.sim.config import NUM_SELECTION_SETS, SPLITS, SimConfig
from haloscope.preprocess.sim.population import Population, draw_population
from haloscope.preprocess.sim.render import RenderedBatch, render_batch
from haloscope.preprocess.sim.rows import batch_table
from haloscope.preprocess.sim.table import SplitWriters, failed_stamp, stamp_bytes

__all__ = ["simulate", "simulate_chunk", "RENDER_BATCH", "SUMMARY_NAME"]

logger = logging.getLogger(__name__)
RENDER_BATCH = 128
SUMMARY_NAME = "_mock_survey.json"
_NAN_PATCH = 8


def _apply_nan_patch(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """NaN an 8x8 patch of one band (the real tables' 'NaN stamp with cutout_ok=1' defect)."""
    band, y0, x0 = rng.integers(0, 3), rng.integers(0, 56), rng.integers(0, 56)
    images = images.copy()
    images[..., band, y0 : y0 + _NAN_PATCH, x0 : x0 + _NAN_PATCH] = np.nan
    return images


def _batch_stamps(
    rng: np.random.Generator, pop: Population, rb: RenderedBatch, fail_bytes: bytes
) -> list[list[bytes]]:
    """Encode each unique image of the batch once: per galaxy one stamp, or one per replicate."""
    pos_of = {int(g): p for p, g in enumerate(rb.pos_index)}
    stamps = []
    for g, defect in enumerate(pop["defect"].tolist()):
        p = pos_of.get(g)
        images = rb.base[g][None] if p is None else rb.positives[p]
        if defect == 2:
            images = _apply_nan_patch(rng, images)
        if defect == 1:
            stamps.append([fail_bytes])
        else:
            stamps.append([stamp_bytes(img, r_only=defect == 3) for img in images])
    return stamps


def _split_blocks(
    pop: Population, table: pa.Table, stamps: list[bytes]
) -> Iterator[tuple[str, pa.Table, list[bytes]]]:
    """Runs of consecutive rows of one split (slices of the rows and stamps), in row order.

    A batch's galaxies are sorted by split, so there is one run per split present.
    """
    row_split = np.repeat(pop["split_index"], pop["num_rows"])
    edges = np.flatnonzero(np.diff(row_split)) + 1
    for start, stop in zip([0, *edges.tolist()], [*edges.tolist(), len(row_split)], strict=True):
        split = SPLITS[int(row_split[start])]
        yield split, table.slice(start, stop - start), stamps[start:stop]


def simulate_chunk(cfg: SimConfig, chunk: int) -> dict[str, int]:
    """Render and write chunk ``chunk``; returns rows written per split.

    Args:
        cfg: simulator settings.
        chunk: chunk index in ``range(cfg.num_chunks)``.
    """
    rng = np.random.default_rng([cfg.seed, chunk])
    pop = draw_population(rng, cfg, chunk, cfg.rows_in_chunk(chunk))
    fail_bytes = failed_stamp()
    with SplitWriters(cfg.out, chunk, cfg.compression) as writers:
        for start in range(0, len(pop["ra"]), RENDER_BATCH):
            sub = {k: v[start : start + RENDER_BATCH] for k, v in pop.items()}
            rb = render_batch(rng, sub, quantize=cfg.quantize)
            table, stamps = batch_table(sub, rb, _batch_stamps(rng, sub, rb, fail_bytes))
            for split, rows, row_stamps in _split_blocks(sub, table, stamps):
                writers.add(split, rows, row_stamps)
    return writers.rows_written


def _run_chunk(args: tuple[SimConfig, int]) -> tuple[int, dict[str, int]]:
    cfg, chunk = args
    return chunk, simulate_chunk(cfg, chunk)


def _check_out(out: Path, overwrite: bool) -> None:
    existing = sorted(out.glob("region_split=*")) if out.exists() else []
    if existing and not overwrite:
        raise ConfigError(
            f"--out {out} already holds a survey ({existing[0].name}); pass --overwrite or pick another directory"
        )
    for split_dir in existing:
        for part in split_dir.glob("*.parquet"):
            part.unlink()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")


@contextlib.contextmanager
def chunk_results(fn: Callable[[Any], Any], cfg: SimConfig) -> Iterator[Iterator[Any]]:
    """``fn((cfg, chunk))`` of every chunk, in ``cfg.workers`` spawned processes (in this one
    for a single worker or chunk), in the order they finish.

    A chunk's exception is re-raised by the iterator; leaving the block terminates the other
    workers at once (the caller removes their temporaries).
    """
    jobs = [(cfg, i) for i in range(cfg.num_chunks)]
    if cfg.workers == 1 or len(jobs) == 1:
        yield map(fn, jobs)
        return
    with mp.get_context("spawn").Pool(min(cfg.workers, len(jobs))) as pool:
        yield pool.imap_unordered(fn, jobs)


def _run_chunks(cfg: SimConfig, progress: bool) -> dict[str, int]:
    """Write every chunk (in ``cfg.workers`` processes); returns rows written per split."""
    totals = {s: 0 for s in SPLITS}
    bar = tqdm(total=cfg.rows, unit="row", desc="simulate", disable=not progress)
    try:
        with chunk_results(_run_chunk, cfg) as results:
            for _, counts in results:
                for split, n in counts.items():
                    totals[split] += n
                bar.update(sum(counts.values()))
    finally:
        bar.close()
    return totals


def _discard_partial(out: Path) -> None:
    """Remove what an unfinished run wrote: part files, temporaries, emptied split folders."""
    for split_dir in out.glob("region_split=*"):
        for path in split_dir.iterdir():
            if path.suffix == ".parquet" or is_temp_name(path.name):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            split_dir.rmdir()


def simulate(cfg: SimConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the whole mock survey described by ``cfg``.

    Args:
        cfg: simulator settings (``cfg.out`` is the hive root).
        overwrite: delete existing ``region_split=*/*.parquet`` under ``cfg.out`` first.
        progress: show a tqdm bar over rows.

    Returns:
        Summary dict (rows per split, seconds, rows/s), also written to ``<out>/_mock_survey.json``.

    Raises:
        ConfigError: ``cfg.out`` already holds a survey and ``overwrite`` is False.
        OSError: ``cfg.out`` cannot be written; it names the file, or ``cfg.out`` when the
            system did not say which (a full disk fails a write, not an open). The part
            files of this run are removed, so no half-written survey is left.
    """
    out = Path(cfg.out)
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
        totals = _run_chunks(cfg, progress)
        seconds = time.perf_counter() - t0
        summary = {
            "rows": sum(totals.values()),
            "rows_per_split": totals,
            "seconds": round(seconds, 3),
            "rows_per_s": round(sum(totals.values()) / max(seconds, 1e-9), 1),
            "num_chunks": cfg.num_chunks,
            "selection_sets": NUM_SELECTION_SETS,
            "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
        }
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _discard_partial(out)
        if not isinstance(exc, OSError) or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    logger.info(
        "wrote %d rows to %s in %.1f s (%.0f rows/s)",
        summary["rows"],
        out,
        seconds,
        summary["rows_per_s"],
    )
    return summary
