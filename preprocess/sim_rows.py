"""The table rows of one rendered batch of the mock survey, built column by column.

A galaxy has ``num_rows`` rows; its row ``j`` is selection set ``sel_sets[j // 2]`` and
replicate ``j % 2``. Values shared by a galaxy's rows (sky position, observing conditions, lens,
source) are computed once per galaxy for the whole batch (:func:`galaxy_columns`) and repeated
with ``take``; per-row values (task id, selection set, replicate, stamp, the replicate's truth)
are filled row by row (:func:`batch_table`). The result is an Arrow table in
``sim_table.SCHEMA``, NULL where the real tables leave a field empty: a control's truth, source
and lens model, and a failed cutout's measured truth.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from haloscope.preprocess.sim_config import (
    BANDS,
    CONTROL_KINDS,
    EXPERIMENT_ID,
    NUM_SELECTION_SETS,
    PIPELINE_VERSION,
    SPLITS,
)
from haloscope.preprocess.sim_population import Population
from haloscope.preprocess.sim_render import TRUTH_COLUMNS, RenderedBatch
from haloscope.preprocess.sim_table import DEFECTS, SCHEMA, task_id

__all__ = ["galaxy_columns", "batch_table", "FAILED_WARNING"]

FAILED_WARNING = "Processing error: cutout extends past the brick edge"
_PSF_EDGES = np.array([1.15, 1.30, 1.47])  # r psfsize quartile edges of the mock (arcsec)
_DEPTH_EDGES = np.array([24.05, 24.35, 24.85])  # r psfdepth quartile edges (AB mag)
_SEL_NAMES = [f"ss{i:02d}" for i in range(NUM_SELECTION_SETS)]
# zero for controls, the lens's or source's value for positives
_CONTROL_ZERO = (
    "theta_e_arcsec",
    "src_dmag",
    "src_reff_arcsec",
    "src_e",
    "shear",
    "shear_phi_rad",
    "src_gr",
    "src_rz",
)
_STR, _F64, _I32 = pa.string(), pa.float64(), pa.int32()


def _f64(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    return pa.array(np.asarray(values, np.float64), _F64, mask=null)


def _i32(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, np.int32), _I32)


def _const(value: object, typ: pa.DataType, num: int) -> pa.Array:
    return pa.array([value] * num, typ)


def _source_columns(pop: Population, ctrl: np.ndarray) -> dict[str, pa.Array]:
    """Lens and source columns: zero (or NULL) for controls, the drawn values for positives."""
    src_q, mass_q, lens_r = pop["src_q"], pop["mass_q"], pop["lens_mag"][:, 1]
    values = {
        "theta_e_arcsec": pop["theta_e"],
        "src_reff_arcsec": pop["src_reff"],
        "src_dmag": pop["src_mag_r"] - lens_r,  # intrinsic source - lens, r
        "src_e": (1 - src_q) / (1 + src_q),
        "shear": pop["shear"],
        "shear_phi_rad": pop["shear_phi"],
        "src_gr": pop["src_gr"],
        "src_rz": pop["src_rz"],
    }
    cols = {k: _f64(np.where(ctrl, 0.0, values[k])) for k in _CONTROL_ZERO}
    cols["src_mag_r"] = _f64(pop["src_mag_r"], ctrl)
    cols["src_redshift"] = _f64(pop["src_z"], ctrl)
    cols["lens_e"] = _f64((1 - mass_q) / (1 + mass_q), ctrl)
    cols["lens_phi_rad"] = _f64(np.mod(pop["mass_phi"], np.pi), ctrl)
    for i, b in enumerate(BANDS):
        cols[f"psf_fwhm_used_{b}"] = _f64(pop["psf_local"][:, i], ctrl)
    te = pop["theta_e"].tolist()
    cols["config_id"] = pa.array(
        ["CONTROL" if c else f"mock_te{t:.3f}" for c, t in zip(ctrl.tolist(), te, strict=True)],
        _STR,
    )
    cols["lens_model"] = pa.array(np.where(ctrl, "CONTROL", "SIE").tolist(), _STR)
    kinds = pop["control_kind"].tolist()
    cols["control_kind"] = pa.array(
        [CONTROL_KINDS[k] if c else None for c, k in zip(ctrl.tolist(), kinds, strict=True)],
        _STR,
    )
    return cols


def galaxy_columns(pop: Population) -> dict[str, pa.Array]:
    """Values shared by all rows of each galaxy of ``pop``, one entry per galaxy.

    Args:
        pop: per-galaxy parameters (a batch of :func:`sim_population.draw_population`).

    Returns:
        Column name -> (G,) Arrow array, for every ``SCHEMA`` column that does not vary
        between a galaxy's rows.
    """
    num = len(pop["ra"])
    ctrl = np.asarray(pop["is_control"], bool)
    ra, dec, psf, depth = pop["ra"], pop["dec"], pop["psfsize"], pop["psfdepth"]
    cols = {
        "experiment_id": _const(EXPERIMENT_ID, _STR, num),
        "ranking_mode": _const("mock", _STR, num),
        "selection_strategy": _const("psf_depth_strata", _STR, num),
        "region_id": _i32(pop["region_id"]),
        "brickname": pa.array([str(b) for b in pop["brickname"]], _STR),
        "ra": _f64(ra),
        "dec": _f64(dec),
        "stamp_size": _i32(np.full(num, 64)),
        "bandset": pa.array(np.where(pop["defect"] == 3, "r", "grz").tolist(), _STR),
        "task_seed64": pa.array(np.asarray(pop["task_seed64"], np.int64)),
        "psf_bin": _i32(np.searchsorted(_PSF_EDGES, psf[:, 1])),
        "depth_bin": _i32(np.searchsorted(_DEPTH_EDGES, depth[:, 1])),
        "ab_zp_nmgy": _f64(np.full(num, 22.5)),
        "pipeline_version": _const(PIPELINE_VERSION, _STR, num),
        "ebv": _f64(0.02 + 0.04 * (1 + np.sin(np.deg2rad(3 * ra)) * np.cos(np.deg2rad(5 * dec)))),
        "bad_pixel_frac": _f64(np.zeros(num)),
        "wise_brightmask_frac": _f64(np.zeros(num)),
        "metrics_only": _i32(np.zeros(num)),
        "is_control": _i32(ctrl),
        "mock_galaxy_id": pa.array(np.asarray(pop["galaxy_id"], np.int64)),
        "mock_defect": pa.array([DEFECTS[d] for d in pop["defect"].tolist()], _STR),
    }
    for i, b in enumerate(BANDS):
        cols[f"lens_mag_{b}"] = _f64(pop["lens_mag"][:, i])
        cols[f"psfsize_{b}"], cols[f"psfdepth_{b}"] = _f64(psf[:, i]), _f64(depth[:, i])
    cols.update(_source_columns(pop, ctrl))
    return cols


def _row_index(num_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Galaxy of each row and the row's index ``j`` within its galaxy."""
    gal = np.repeat(np.arange(len(num_rows)), num_rows)
    start = np.cumsum(num_rows) - num_rows
    return gal, np.arange(len(gal)) - start[gal]


def _truth_columns(
    pop: Population, rb: RenderedBatch, gal: np.ndarray, rep: np.ndarray
) -> dict[str, pa.Array]:
    """Per-replicate truth of the positives' rows; NULL on control rows, and on failed cutouts
    for everything measured on the stamp (all but the magnification and source position)."""
    pos_of = np.full(len(pop["ra"]), -1)
    pos_of[rb.pos_index] = np.arange(len(rb.pos_index))
    p_row = pos_of[gal]
    pos = p_row >= 0
    failed = pop["defect"][gal] == 1

    def per_rep(table: np.ndarray) -> np.ndarray:
        out = np.zeros(len(gal))
        out[pos] = table[p_row[pos], rep[pos]]
        return out

    cols = {
        k: _f64(per_rep(rb.truth[k]), ~pos if k == "magnification" else ~pos | failed)
        for k in TRUTH_COLUMNS
    }
    for key, name in (("src_x", "src_x_arcsec"), ("src_y", "src_y_arcsec")):
        cols[name] = _f64(np.where(pos, pop[key][gal, rep], 0.0))
    cols["src_phi_rad"] = _f64(np.where(pos, pop["src_phi"][gal, rep], 0.0))
    return cols


def batch_table(pop: Population, rb: RenderedBatch, stamps: list[list[bytes]]) -> pa.Table:
    """Every row of a rendered batch, galaxy after galaxy, in ``SCHEMA``.

    Args:
        pop: the batch's galaxies.
        rb: their rendered images and truth.
        stamps: per galaxy, its encoded stamp (controls, failed cutouts) or one per replicate.

    Returns:
        The rows; the split of row ``i`` is ``SPLITS[pop["split_index"][gal_i]]``.
    """
    gal, j = _row_index(pop["num_rows"])
    rep = j % 2
    failed = pop["defect"][gal] == 1
    shared = galaxy_columns(pop)
    cols = {k: v.take(pa.array(gal)) for k, v in shared.items()}
    sel = [_SEL_NAMES[s] for s in pop["sel_sets"][gal, j // 2].tolist()]
    splits = [SPLITS[s] for s in pop["split_index"][gal].tolist()]
    keys = zip(
        sel,
        splits,
        cols["brickname"].to_pylist(),
        pop["ra"][gal].tolist(),
        pop["dec"][gal].tolist(),
        cols["config_id"].to_pylist(),
        rep.tolist(),
        strict=True,
    )
    cols["task_id"] = pa.array([task_id(*key) for key in keys], _STR)
    cols["selection_set_id"] = pa.array(sel, _STR)
    cols["replicate"] = _i32(rep)
    pairs = zip(gal.tolist(), rep.tolist(), strict=True)
    cols["stamp_npz"] = pa.array([stamps[g][r % len(stamps[g])] for g, r in pairs], pa.binary())
    cols["cutout_ok"] = cols["metrics_ok"] = _i32(~failed)
    cols["physics_valid"] = pa.array(~failed)
    cols["physics_warnings"] = pa.array(np.where(failed, FAILED_WARNING, None).tolist(), _STR)
    cols.update(_truth_columns(pop, rb, gal, rep))
    return pa.Table.from_arrays([cols[f.name] for f in SCHEMA], schema=SCHEMA)
