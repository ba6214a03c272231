"""``haloscope bench search``: cutouts/s of ``haloscope search``, on CPU cores and on a GPU.

Generates its own data, so it runs on a bare machine: mock survey rows
(``preprocess.sim.simulate``) with their truth columns dropped, and a randomly initialised
checkpoint in the ``haloscope train`` format.

CPU (default): one process, one torch thread, no loader workers (so "per core"), the tiny
``--arch`` (default convnext_atto): cutouts/s of a whole search over the scoring loop (read,
decode, normalise, model, part files; ``summary.json``'s ``cutouts_per_s``) from unlabelled
parquet and from FITS files of the same stamps (+ CSV catalogue), and the input stage alone
(read + decode + normalise, no model) of each.

GPU (``--gpu``): ConvNeXt-Tiny with the meta head, bf16 autocast, batch 1024, CUDA graph.
(a) the synthetic graphed inference step (``infer.steps.make_predict_step``, batches already
on the device, as ``bench gpu``); (b) ``haloscope search`` over unlabelled shards of
``--samples`` samples (drawn from a pool of normalised mock stamps, unique ids) with
``--num-workers`` loader workers. The steady search rate (``summary.json``'s
``steady_cutouts_per_s``) runs from the first scored batch to the last (model load, graph
capture and worker start excluded); the whole scoring rate is reported too. ``search_over_synthetic`` = steady (b) / (a); the issue's target is >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from haloscope.atomic import atomic_write_text

__all__ = ["run_bench", "parse_options", "mock_unlabelled", "write_checkpoint"]

log = logging.getLogger(__name__)
META_COLS = ("psfsize_r", "psfdepth_r")
_KEEP = ("task_id", "ra", "dec", "cutout_ok", "bandset", *META_COLS, "stamp_npz")
"""The mock's columns a survey table has; every truth column is dropped."""


def mock_unlabelled(out: Path, rows: int, seed: int = 0) -> Path:
    """An unlabelled parquet file of ``rows`` mock rows (the simulator's, truth dropped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from haloscope.preprocess.sim.config import SimConfig
    from haloscope.preprocess.sim.run import simulate

    root = out.parent / "mock_labelled"
    simulate(SimConfig(out=root, rows=rows, seed=seed, workers=1), progress=False)
    tables = [pq.read_table(p, columns=list(_KEEP)) for p in sorted(root.rglob("*.parquet"))]
    pq.write_table(pa.concat_tables(tables), out, row_group_size=256)
    return out


def write_checkpoint(path: Path, arch: str, norm_method: str = "asinh") -> Path:
    """A ``haloscope train``-format checkpoint of a randomly initialised ``arch``."""
    import torch

    from haloscope.preprocess.normalize import norm_settings
    from haloscope.train.checkpoint import save_checkpoint
    from haloscope.train.model import build_model

    torch.manual_seed(0)
    args = {"arch": arch, "meta_cols": list(META_COLS), "meta_mean": [1.3, 24.5],
            "meta_std": [0.2, 0.5], "dropout": 0.1, "drop_path_rate": 0.1}  # fmt: skip
    model = build_model(**args)
    preprocess = {"min_theta_over_psf": 0.5, "hard_neg_weight": None, "stamp_px": 64,
                  "norm": norm_settings(norm_method)}  # fmt: skip
    return save_checkpoint(path, {"model": model.state_dict(), "model_args": args,
                                  "config": json.dumps({}), "preprocess": preprocess,
                                  "meta": {"cols": list(META_COLS)},
                                  "progress": {"epoch": 0, "global_step": 0}})  # fmt: skip


def _fits_copy(parquet: Path, folder: Path) -> tuple[Path, Path]:
    """FITS files (3, 64, 64) g, r, z of every decodable stamp, and a CSV catalogue."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    from astropy.io import fits

    from haloscope.preprocess.decode import decode_stamps

    table = pq.read_table(parquet)
    stamps, codes = decode_stamps(table.column("stamp_npz").to_pylist())
    folder.mkdir(parents=True, exist_ok=True)
    ids = table.column("task_id").to_pylist()
    keep = np.flatnonzero(codes == 0)
    for i in keep.tolist():
        hdu = fits.PrimaryHDU(stamps[i])
        hdu.header["BANDS"] = "grz"
        hdu.writeto(folder / f"{ids[i]}.fits")
    cat = table.select(["task_id", "ra", "dec", *META_COLS]).take(pa.array(keep))
    cat = cat.rename_columns(["id", "ra", "dec", *META_COLS])
    pcsv.write_csv(cat, folder.parent / "catalog.csv")
    return folder, folder.parent / "catalog.csv"


def _input_rate(source, chunks) -> float:
    """cutouts/s of the input stage alone (read, decode, normalise), this process."""
    t0 = time.perf_counter()
    rows = sum(len(p.ids) for c in chunks for p in source.read(c, 256))
    return round(rows / (time.perf_counter() - t0), 1)


def _search(input_: str, ckpt: Path, out: Path, **flags: Any) -> dict[str, Any]:
    from haloscope.infer.search.config import SearchConfig
    from haloscope.infer.search.run import run_search

    cfg = SearchConfig(input=input_, ckpt=(str(ckpt),), out=str(out), progress=False, **flags)
    run_search(cfg)
    return json.loads((out / "summary.json").read_text())


def _cpu_rows(work: Path, rows: int, arch: str) -> list[dict[str, Any]]:
    import torch

    from haloscope.infer.search.inputs import open_input

    torch.set_num_threads(1)  # one core: one torch thread, decoding in this process
    parquet = mock_unlabelled(work / "survey.parquet", rows)
    fits_dir, catalog = _fits_copy(parquet, work / "fits")
    ckpt = write_checkpoint(work / "run" / "best.pt", arch)
    settings = {"norm_method": "asinh", "meta_columns": list(META_COLS)}
    out = []
    for kind, spec, extra in (("parquet", str(parquet), {}),
                              ("fits", str(fits_dir), {"catalog": str(catalog)})):  # fmt: skip
        src = open_input(spec, kind, settings, **extra)
        summary = _search(spec, ckpt, work / f"search_{kind}", device="cpu", batch_size=256,
                          num_workers=0, **extra)  # fmt: skip
        out.append({"source": kind, "model": arch, "rows": summary["rows"],
                    "scored": summary["scored"], "threads": 1, "num_workers": 0,
                    "search_cutouts_per_s_per_core": summary["cutouts_per_s"],
                    "input_only_cutouts_per_s_per_core": _input_rate(src, src.chunks())})  # fmt: skip
        log.info("cpu %s", out[-1])
    return out


def _pool_shards(work: Path, samples: int, pool_rows: int) -> Path:
    """Unlabelled shards of ``samples`` samples drawn from ``pool_rows`` normalised mock
    stamps (unique ids; the content does not change the speed)."""
    from haloscope.preprocess.convert.unlabelled import SEARCH_SPLIT, write_unlabelled_shards
    from haloscope.shards.index import open_shard
    from haloscope.shards.manifest import build_manifest, load_manifest, write_manifest
    from haloscope.shards.write import write_shard

    parquet = mock_unlabelled(work / "pool.parquet", pool_rows)
    pool_dir = work / "pool_shards"
    write_unlabelled_shards(parquet, pool_dir, meta_cols=META_COLS, norm_method="asinh")
    pool = load_manifest(pool_dir / SEARCH_SPLIT)
    views = [
        v for s in pool.shards for v in open_shard(pool.split_dir / s["file"], s["records"], 2)
    ]
    image = np.concatenate([v.image for v in views])
    meta, table = np.concatenate([v.meta for v in views]), np.concatenate([v.table for v in views])
    rng, split = np.random.default_rng(0), work / "shards" / SEARCH_SPLIT
    split.mkdir(parents=True, exist_ok=True)
    infos, per = [], 8192
    for s, lo in enumerate(range(0, samples, per)):
        idx = rng.integers(0, len(table), min(per, samples - lo))
        t = table[idx].copy()
        t["task_id"] = [f"m{lo + i:09d}".encode() for i in range(len(idx))]
        infos.append(write_shard(split / f"shard-{s:06d}.tar", image[idx], meta[idx], t).to_json())
    doc = build_manifest(split=SEARCH_SPLIT, shards=infos, counts={"unlabelled": samples},
                         rejected={}, norm=pool.norm, preprocess={"stamp_px": 64},
                         meta={"columns": list(META_COLS), "mean": pool.meta_mean,
                               "std": pool.meta_std})  # fmt: skip
    write_manifest(split, {**doc, "unlabelled": True})
    return split


def _synthetic_rate(ckpt: Path, batch_size: int, seconds: float) -> dict[str, Any]:
    """img/s of the graphed inference step on device-resident batches (the (a) feed)."""
    import torch

    from haloscope.infer.steps import make_predict_step
    from haloscope.train.checkpoint import load_for_inference

    model, _ = load_for_inference(ckpt, "cuda")
    model = model.to(memory_format=torch.channels_last)
    step = make_predict_step(model, device="cuda", batch_size=batch_size, mode="graph", bf16=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(batch_size, 3, 64, 64, device="cuda", generator=g)
    meta = torch.rand(batch_size, 2, device="cuda", generator=g) + torch.tensor(
        [1.0, 24.0], device="cuda"
    )
    for _ in range(10):
        step.predict(images, meta)
    torch.cuda.synchronize()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            step.predict(images, meta)
        torch.cuda.synchronize()
        steps += 20
    dt = time.perf_counter() - t0
    return {"img_per_s": round(steps * batch_size / dt, 1), "step_ms": round(1e3 * dt / steps, 3)}


def _gpu_doc(work: Path, samples: int, num_workers: int, seconds: float) -> dict[str, Any]:
    from haloscope.bench.gpu import gpu_env
    from haloscope.infer.search import engine

    ckpt = write_checkpoint(work / "run" / "best.pt", "convnext_tiny")
    split = _pool_shards(work, samples, pool_rows=2048)
    synthetic = _synthetic_rate(ckpt, 1024, seconds)
    log.info("synthetic graphed step: %s", synthetic)
    rows, default = [], engine.PIN_THREADS
    for threads in (1, default):  # one pin thread (a DataLoader's) as the in-run baseline
        engine.PIN_THREADS = threads
        try:
            summary = _search(str(split), ckpt, work / f"search_pin{threads}", device="cuda",
                              batch_size=1024, num_workers=num_workers)  # fmt: skip
        finally:
            engine.PIN_THREADS = default
        steady = summary["steady_cutouts_per_s"]
        rows.append({"source": "shards", "samples": samples, "num_workers": num_workers,
                     "pin_threads": threads, "whole_cutouts_per_s": summary["cutouts_per_s"],
                     "steady_cutouts_per_s": steady, "scoring_wall_s": summary["scoring_wall_s"],
                     "steady_over_synthetic": None if not steady
                     else round(steady / synthetic["img_per_s"], 3)})  # fmt: skip
        log.info("search: %s", rows[-1])
    search = rows[-1]
    return {"env": gpu_env(), "model": "convnext_tiny (meta head), bf16 autocast + fp32 logit",
            "batch_size": 1024, "synthetic_graph_step": synthetic, "search": search,
            "search_pin_threads": rows,
            "search_over_synthetic": search["steady_over_synthetic"],
            "search_whole_over_synthetic": round(search["whole_cutouts_per_s"]
                                                 / synthetic["img_per_s"], 3),
            "target": 0.9}  # fmt: skip


def run_bench(out_path: str, *, gpu: bool = False, rows: int = 512, arch: str = "convnext_atto",
              samples: int = 393216, num_workers: int = 8, seconds: float = 8.0,
              work_dir: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the CPU (default) or GPU benchmark and write its JSON to ``out_path``.

    Args:
        out_path: result file.
        gpu: the GPU comparison instead of the CPU rates.
        rows: CPU: mock rows searched (parquet, then FITS).
        arch: CPU: the model.
        samples: GPU: shard samples searched.
        num_workers: GPU: loader workers of the search.
        seconds: GPU: how long the synthetic step runs.
        work_dir: where the generated data go (default: a temporary folder, removed).
    """
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if gpu:
            doc = _gpu_doc(work, samples, num_workers, seconds)
        else:
            doc = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                   "load_avg_before": [round(x, 2) for x in os.getloadavg()],
                   "cpu": _cpu_rows(work, rows, arch)}  # fmt: skip
        doc["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, json.dumps(doc, indent=1) + "\n")
    return doc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haloscope bench search",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--gpu", action="store_true",
                   help="GPU: search from shards vs the synthetic graphed inference step")  # fmt: skip
    p.add_argument("--rows", type=int, default=512, help="CPU: mock rows searched")
    p.add_argument("--arch", default="convnext_atto", help="CPU: the model")
    p.add_argument("--samples", type=int, default=393216, help="GPU: shard samples searched")
    p.add_argument("--num-workers", type=int, default=8, help="GPU: search loader workers")
    p.add_argument("--seconds", type=float, default=8.0, help="GPU: synthetic step duration")
    p.add_argument("--work-dir", default=None, help="where generated data go (temporary)")
    return p


def parse_options(argv: list[str]) -> dict[str, Any]:
    """``run_bench`` keyword arguments from the flags after ``haloscope bench search``."""
    a = _parser().parse_args(argv)
    return {"gpu": a.gpu, "rows": a.rows, "arch": a.arch, "samples": a.samples,
            "num_workers": a.num_workers, "seconds": a.seconds, "work_dir": a.work_dir}  # fmt: skip
