"""``haloscope simulate --survey``: an unlabelled mock survey to search, its truth kept apart.

A search scores every galaxy of a footprint once, knowing nothing about it. This writes what
a search reads: one row per galaxy in ``OUT/cutouts/part-<chunk>.parquet`` (a flat folder,
no ``region_split``) with the stamp, sky position, id, ``cutout_ok``, ``bandset`` and the
observing conditions a checkpoint may use as meta inputs (``SURVEY_SCHEMA``); nothing that
tells a lens from a control. The truth of every row goes to ``OUT/truth.parquet``
(``TRUTH_SCHEMA``: ``id``, ``is_lens``, ``kind``, ``theta_e_arcsec``, ``arc_snr``,
``psfsize_r`` for the eval's detectable definition, ...), which
joins the cutouts 1:1 on ``id``.

The galaxies, images and defects are the labelled mock's (``population``, ``render``): a
fraction ``--survey-lens-frac`` of galaxies carry a planted lens (replicate 0 of its two
arcs), the others are controls with the usual share of lens-like confusers. Chunks are the
labelled mock's too (``CHUNK_ROWS`` rows, ``default_rng([seed, chunk])``), so the bytes
depend on the seed only, never on ``--workers``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from haloscope.atomic import atomic_path, atomic_write_text, is_temp_name
from haloscope.errors import ConfigError
from haloscope.preprocess.sim.config import BANDS, CONTROL_KINDS, SimConfig
from haloscope.preprocess.sim.population import Population, draw_population
from haloscope.preprocess.sim.render import render_batch
from haloscope.preprocess.sim.rows import galaxy_columns
from haloscope.preprocess.sim.run import SUMMARY_NAME, chunk_results
from haloscope.preprocess.sim.run import _apply_nan_patch as apply_nan_patch  # one rule
from haloscope.preprocess.sim.table import DEFECTS, binary_array, failed_stamp, stamp_bytes

__all__ = [
    "SURVEY_SCHEMA",
    "TRUTH_SCHEMA",
    "CUTOUT_DIR",
    "TRUTH_NAME",
    "LENS_KIND",
    "survey_chunk",
    "survey_id",
    "simulate_survey",
]

logger = logging.getLogger(__name__)

CUTOUT_DIR = "cutouts"
TRUTH_NAME = "truth.parquet"
LENS_KIND = "lens"
"""``kind`` of a planted lens in the truth table (controls carry their control kind)."""
_RENDER_BATCH = 128
# rows per row group: a search's unit of work and of resume on parquet input (4 render batches)
_ROW_GROUP_ROWS = 4 * _RENDER_BATCH
_F64, _STR = pa.float64(), pa.string()
_CONDITIONS = [f"{k}_{b}" for k in ("psfsize", "psfdepth") for b in BANDS] + ["ebv"]
SURVEY_SCHEMA = pa.schema(
    [
        ("id", _STR),
        ("ra", _F64),
        ("dec", _F64),
        ("brickname", _STR),
        ("bandset", _STR),
        *[(c, _F64) for c in _CONDITIONS],
        ("cutout_ok", pa.int32()),
        ("stamp_npz", pa.binary()),
    ]
)
TRUTH_SCHEMA = pa.schema(
    [
        ("id", _STR),
        ("is_lens", pa.int8()),
        ("kind", _STR),
        ("theta_e_arcsec", _F64),
        ("arc_snr", _F64),
        ("arc_snr_sum", _F64),
        ("magnification", _F64),
        ("psfsize_r", _F64),
        ("cutout_ok", pa.int32()),
        ("defect", _STR),
    ]
)


def survey_id(galaxy_id: np.ndarray) -> list[str]:
    """Ids of survey rows: ``mock`` and the galaxy's 12-digit number (chunk * 1e6 + index)."""
    return [f"mock{g:012d}" for g in np.asarray(galaxy_id).tolist()]


def _population(cfg: SimConfig, chunk: int) -> tuple[np.random.Generator, Population]:
    """The chunk's galaxies: one selection set and so 2 labelled rows each, i.e. one galaxy per
    survey row, of which ``survey_lens_frac`` are lenses."""
    rng = np.random.default_rng([cfg.seed, chunk])
    drawn = dataclasses.replace(cfg, control_frac=1.0 - cfg.survey_lens_frac, selection_frac=0.0)
    num = cfg.rows_in_chunk(chunk)
    pop = draw_population(rng, drawn, chunk, 2 * num)
    assert len(pop["ra"]) == num, (len(pop["ra"]), num)  # 2 rows per galaxy, exactly
    return rng, pop


def _stamps(rng: np.random.Generator, pop: Population, rb, fail: bytes) -> list[bytes]:
    """One stamp per galaxy: a lens shows its replicate 0; defects as in the labelled mock."""
    pos_of = {int(g): p for p, g in enumerate(rb.pos_index)}
    out = []
    for g, defect in enumerate(pop["defect"].tolist()):
        p = pos_of.get(g)
        image = rb.base[g] if p is None else rb.positives[p, 0]
        if defect == 2:
            image = apply_nan_patch(rng, image[None])[0]
        out.append(fail if defect == 1 else stamp_bytes(image, r_only=defect == 3))
    return out


def _truth(pop: Population, rb, ids: list[str]) -> pa.Table:
    num = len(ids)
    is_lens = ~np.asarray(pop["is_control"], bool)
    values = {k: np.full(num, np.nan) for k in ("arc_snr", "arc_snr_sum", "magnification")}
    for key, column in values.items():
        column[rb.pos_index] = rb.truth[key][:, 0]
    kinds = [
        LENS_KIND if lens else CONTROL_KINDS[k]
        for lens, k in zip(is_lens.tolist(), pop["control_kind"].tolist(), strict=True)
    ]
    columns = {
        "id": ids,
        "is_lens": is_lens.astype(np.int8),
        "kind": kinds,
        "theta_e_arcsec": np.where(is_lens, pop["theta_e"], np.nan),
        **values,
        "psfsize_r": pop["psfsize"][:, 1],
        "cutout_ok": (pop["defect"] != 1).astype(np.int32),
        "defect": [DEFECTS[d] or "" for d in pop["defect"].tolist()],
    }
    return pa.table(columns, schema=TRUTH_SCHEMA)


def _rows(pop: Population, ids: list[str]) -> pa.Table:
    """The batch's survey rows, every column but ``stamp_npz``."""
    cols = galaxy_columns(pop)
    values = {"id": ids, "cutout_ok": (pop["defect"] != 1).astype(np.int32)}
    values.update({k: cols[k] for k in ("ra", "dec", "brickname", "bandset", *_CONDITIONS)})
    schema = SURVEY_SCHEMA.remove(SURVEY_SCHEMA.get_field_index("stamp_npz"))
    return pa.table({f.name: pa.array(values[f.name], f.type) for f in schema}, schema=schema)


def survey_chunk(cfg: SimConfig, chunk: int) -> pa.Table:
    """Render chunk ``chunk`` of the survey into ``OUT/cutouts/part-<chunk>.parquet``.

    Args:
        cfg: simulator settings (``cfg.survey`` set).
        chunk: chunk index in ``range(cfg.num_chunks)``.

    Returns:
        The chunk's truth rows (``TRUTH_SCHEMA``), in the part file's row order.
    """
    rng, pop = _population(cfg, chunk)
    codec = None if cfg.compression == "none" else cfg.compression
    fail, truths, group = failed_stamp(), [], []
    final = f"{cfg.out}/{CUTOUT_DIR}/part-{chunk:05d}.parquet"
    with atomic_path(final) as tmp, pq.ParquetWriter(tmp, SURVEY_SCHEMA, compression=codec) as w:
        for start in range(0, len(pop["ra"]), _RENDER_BATCH):
            sub = {k: v[start : start + _RENDER_BATCH] for k, v in pop.items()}
            rb = render_batch(rng, sub, quantize=cfg.quantize)
            ids = survey_id(sub["galaxy_id"])
            stamps = binary_array(_stamps(rng, sub, rb, fail))
            group.append(_rows(sub, ids).append_column("stamp_npz", stamps))
            truths.append(_truth(sub, rb, ids))
            if sum(t.num_rows for t in group) >= _ROW_GROUP_ROWS:
                w.write_table(pa.concat_tables(group).combine_chunks(), _ROW_GROUP_ROWS)
                group = []
        if group:
            w.write_table(pa.concat_tables(group).combine_chunks(), _ROW_GROUP_ROWS)
    return pa.concat_tables(truths)


def _run_chunk(args: tuple[SimConfig, int]) -> tuple[int, pa.Table]:
    cfg, chunk = args
    return chunk, survey_chunk(cfg, chunk)


def _check_out(out: Path, overwrite: bool) -> None:
    existing = [*sorted((out / CUTOUT_DIR).glob("*.parquet")), out / TRUTH_NAME]
    existing = [p for p in existing if p.exists()]
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if existing and not overwrite:
        raise ConfigError(
            f"--out {out} already holds a survey ({existing[0].relative_to(out)}); "
            "pass --overwrite or pick another directory"
        )
    for path in existing:
        path.unlink()


def _run_chunks(cfg: SimConfig, progress: bool) -> pa.Table:
    """Write every chunk (in ``cfg.workers`` processes); returns the truth in chunk order."""
    truths: dict[int, pa.Table] = {}
    bar = tqdm(total=cfg.rows, unit="row", desc="simulate --survey", disable=not progress)
    try:
        with chunk_results(_run_chunk, cfg) as results:
            for chunk, truth in results:
                truths[chunk] = truth
                bar.update(truth.num_rows)
    finally:
        bar.close()
    return pa.concat_tables([truths[i] for i in sorted(truths)])


def _discard_partial(out: Path) -> None:
    """Remove what an unfinished run wrote: part files, the truth, temporaries."""
    folder = out / CUTOUT_DIR
    for path in [*(folder.iterdir() if folder.is_dir() else []), *out.iterdir()]:
        if path.suffix == ".parquet" and path.parent == folder or is_temp_name(path.name):
            path.unlink(missing_ok=True)
    (out / TRUTH_NAME).unlink(missing_ok=True)


def simulate_survey(cfg: SimConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the unlabelled survey described by ``cfg`` and its truth (module docstring).

    Args:
        cfg: simulator settings with ``survey`` set (``cfg.out`` is the survey folder).
        overwrite: replace an existing survey's parts and truth under ``cfg.out``.
        progress: show a tqdm bar over rows.

    Returns:
        Summary dict (rows, lenses, seconds, rows/s), also written to
        ``<out>/_mock_survey.json``.

    Raises:
        ConfigError: ``cfg.out`` already holds a survey and ``overwrite`` is False.
        OSError: ``cfg.out`` cannot be written; what this run wrote is removed.
    """
    out = Path(cfg.out)
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
        truth = _run_chunks(cfg, progress)
        with atomic_path(out / TRUTH_NAME) as tmp:
            pq.write_table(truth, tmp, compression="zstd")
        seconds = time.perf_counter() - t0
        num_lenses = int(np.asarray(truth["is_lens"]).sum())
        summary = {
            "rows": truth.num_rows,
            "lenses": num_lenses,
            "lens_frac": round(num_lenses / max(truth.num_rows, 1), 5),
            "cutouts": f"{CUTOUT_DIR}/",
            "truth": TRUTH_NAME,
            "seconds": round(seconds, 3),
            "rows_per_s": round(truth.num_rows / max(seconds, 1e-9), 1),
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"},
        }
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    except BaseException:
        with contextlib.suppress(OSError):
            _discard_partial(out)
        raise
    logger.info(
        "wrote a %d-row survey (%d planted lenses) to %s in %.1f s",
        summary["rows"],
        num_lenses,
        out,
        seconds,
    )
    return summary
