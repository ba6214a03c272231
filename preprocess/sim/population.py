"""Draw the galaxies of one chunk: sky position, observing conditions, lens, source, label.

All randomness of a chunk comes from one ``np.random.Generator``; numbers follow
``reference/science.md`` section 2.11 (parameter sheet) and are listed in ``docs/mock_survey.md``.
"""

from __future__ import annotations

import numpy as np

from haloscope.preprocess.sim.config import (
    CONFUSER_KINDS,
    CONTROL_KINDS,
    NUM_SELECTION_SETS,
    REGIONS_PER_CHUNK,
    SimConfig,
)
from haloscope.preprocess.sim.physics import moffat_fwhm_from_psfsize
from haloscope.preprocess.sim.sources import MAX_KNOTS, draw_near_miss_sources, draw_sources

__all__ = ["Population", "draw_population", "brickname_of", "MAX_KNOTS"]

Population = dict[str, np.ndarray]
_REGION_COLS = 340  # regions per 1-degree dec row before wrapping
_REGION_ROWS = 97  # dec rows from -65 to +32 deg
_BRICK_DEG = 0.25
_PSF_MEDIAN = np.array([1.45, 1.30, 1.20])  # g, r, z psfsize medians (arcsec)
_DEPTH_DECALS = np.array([24.8, 24.2, 23.3])
_DEPTH_DES = np.array([25.3, 25.1, 23.9])


def brickname_of(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """DR10-style brick name ``RRRR[pm]DDD`` (RA and |Dec| in units of 0.1 deg) of brick centres."""
    ra10 = np.floor(np.asarray(ra_deg) * 10).astype(int)
    dec10 = np.floor(np.abs(np.asarray(dec_deg)) * 10).astype(int)
    signs = np.where(np.asarray(dec_deg) >= 0, "p", "m")
    return np.array(
        [f"{r:04d}{s}{d:03d}" for r, s, d in zip(ra10, signs, dec10, strict=False)], dtype=object
    )


def _rows_per_galaxy(rng: np.random.Generator, num_rows: int, p: float = 0.32) -> np.ndarray:
    """Selection-set counts (1 + Binomial(11, p); p=0.32: mean 4.5, ~9 rows with 2 replicates)."""
    est = int(num_rows / 7) + 16
    while True:
        k = 1 + rng.binomial(NUM_SELECTION_SETS - 1, p, size=est)
        rows = 2 * k
        if rows.sum() >= num_rows:
            break
        est *= 2
    cum = np.cumsum(rows)
    last = int(np.searchsorted(cum, num_rows))
    rows = rows[: last + 1].copy()
    rows[-1] -= int(cum[last] - num_rows)
    return rows


def _sky(rng: np.random.Generator, cfg: SimConfig, chunk: int, num: int) -> Population:
    """Regions, bricks, positions and split of each galaxy."""
    counts = np.round(np.array(cfg.split_fracs) * REGIONS_PER_CHUNK).astype(int)
    counts[0] = REGIONS_PER_CHUNK - counts[1:].sum()
    pattern = rng.permutation(np.repeat(np.arange(3), counts))
    region_local = rng.integers(0, REGIONS_PER_CHUNK, num)
    region_id = chunk * REGIONS_PER_CHUNK + region_local
    wrapped = region_id % (_REGION_COLS * _REGION_ROWS)
    ra0 = 10.0 + (wrapped % _REGION_COLS) * 1.0
    dec0 = -65.0 + (wrapped // _REGION_COLS) * 1.0
    bx, by = rng.integers(0, 4, num), rng.integers(0, 4, num)
    ra_c = ra0 + (bx + 0.5) * _BRICK_DEG
    dec_c = dec0 + (by + 0.5) * _BRICK_DEG
    ra = ra_c + rng.uniform(-0.5, 0.5, num) * _BRICK_DEG
    dec = dec_c + rng.uniform(-0.5, 0.5, num) * _BRICK_DEG
    brick_key = region_id * 16 + by * 4 + bx
    return {
        "region_id": region_id.astype(np.int32),
        "split_index": pattern[region_local].astype(np.int8),
        "brickname": brickname_of(ra_c, dec_c),
        "brick_key": brick_key.astype(np.int64),
        "ra": ra,
        "dec": dec,
    }


def _conditions(rng: np.random.Generator, brick_key: np.ndarray) -> Population:
    """Per-brick PSF size and depth (all bands correlated), plus per-object local values."""
    keys, inverse = np.unique(brick_key, return_inverse=True)
    nb = len(keys)
    common = rng.standard_normal(nb)[:, None]
    z = np.sqrt(0.7) * common + np.sqrt(0.3) * rng.standard_normal((nb, 3))
    psfsize = np.clip(_PSF_MEDIAN * np.exp(0.18 * z), 0.9, 2.6)
    u = rng.uniform(size=nb)
    is_des = u >= 0.7
    base = np.where(is_des[:, None], _DEPTH_DES, _DEPTH_DECALS)
    shallow = rng.uniform(size=nb) < 0.10
    depth = (
        base
        + 0.2 * rng.standard_normal(nb)[:, None]
        + 0.12 * rng.standard_normal((nb, 3))
        - 0.7 * shallow[:, None]
        - 0.25 * (psfsize - _PSF_MEDIAN)  # worse seeing, shallower point-source depth
    )
    depth = np.clip(depth, [23.3, 22.9, 22.0], [26.0, 26.0, 25.0])
    n_exp = np.where(is_des, 10.0, rng.integers(2, 5, nb).astype(float))
    num = len(brick_key)
    out = {"psfsize": psfsize[inverse], "psfdepth": depth[inverse], "n_exp": n_exp[inverse]}
    out["psf_local"] = np.clip(
        out["psfsize"] * np.exp(0.03 * rng.standard_normal((num, 3))), 0.8, 2.8
    )
    out["depth_local"] = out["psfdepth"] + 0.05 * rng.standard_normal((num, 3))
    return out


def _lens_light(rng: np.random.Generator, num: int) -> Population:
    """LRG-like Sersic light: z mag 17-20 rising to faint, red colours, n 3-6, R_e 0.6-2.5"."""
    k = 0.6 * np.log(10.0)
    u = rng.uniform(size=num)
    mag_z = 20.0 + np.log(1.0 - u * (1.0 - np.exp(-3.0 * k))) / k
    t = rng.uniform(size=num)
    g_r = np.clip(1.2 + 0.7 * t + 0.08 * rng.standard_normal(num), 1.1, 2.0)
    r_z = np.clip(0.7 + 0.8 * t + 0.08 * rng.standard_normal(num), 0.6, 1.6)
    mag_r = mag_z + r_z
    q = rng.uniform(0.6, 1.0, num)
    return {
        "lens_mag": np.stack([mag_r + g_r, mag_r, mag_z], axis=1),
        "lens_n": rng.uniform(3.0, 6.0, num),
        "lens_reff": np.exp(rng.uniform(np.log(0.6), np.log(2.5), num)),
        "lens_q": q,
        "lens_phi": rng.uniform(0.0, np.pi, num),
    }


def _lens_mass(rng: np.random.Generator, pop: Population) -> Population:
    """SIE + external shear tied to the light (science.md 2.5-2.6), drawn for every galaxy."""
    num = len(pop["ra"])
    shear = rng.uniform(0.0, 0.08, num)
    shear_phi = rng.uniform(0.0, np.pi, num)
    return {
        "theta_e": np.exp(rng.uniform(np.log(0.5), np.log(2.5), num)),
        "mass_q": np.clip(pop["lens_q"] + rng.uniform(-0.1, 0.1, num), 0.5, 1.0),
        "mass_phi": pop["lens_phi"] + np.deg2rad(10.0) * rng.standard_normal(num),
        "shear": shear,
        "shear_phi": shear_phi,
        "gamma1": shear * np.cos(2 * shear_phi),
        "gamma2": shear * np.sin(2 * shear_phi),
    }


_LENS_KEYS = ("theta_e", "mass_q", "mass_phi", "gamma1", "gamma2")
NEAR_MISS = CONTROL_KINDS.index("near_miss")


def _sources(rng: np.random.Generator, pop: Population) -> Population:
    """Lensed sources of the positives and of near-miss controls (``sources``); zeros for
    other controls."""
    num = len(pop["ra"])
    pos = np.flatnonzero(~pop["is_control"])
    sky = {
        "depth_r": pop["depth_local"][pos, 1],
        "fwhm_r": moffat_fwhm_from_psfsize(pop["psf_local"][pos, 1]),
    }
    drawn = draw_sources(rng, {k: pop[k][pos] for k in _LENS_KEYS}, sky)
    out: Population = {}
    for key, val in drawn.items():
        out[key] = np.zeros((num, *val.shape[1:]), val.dtype)
        out[key][pos] = val
    out["src_q"][pop["is_control"]] = 1.0  # a valid (unused) shape for controls
    out["src_n"][pop["is_control"]] = 1.0
    near = np.flatnonzero(pop["control_kind"] == NEAR_MISS)
    if len(near):
        lens = {k: pop[k][near] for k in _LENS_KEYS}
        for key, val in draw_near_miss_sources(
            rng, lens, {"depth_r": pop["depth_local"][near, 1]}
        ).items():
            out[key][near] = val
    return out


def draw_population(
    rng: np.random.Generator, cfg: SimConfig, chunk: int, num_rows: int
) -> Population:
    """Draw every unique galaxy of a chunk, sorted by (split, brick).

    Args:
        rng: the chunk's generator.
        cfg: simulator settings.
        chunk: chunk index (sets the sky regions).
        num_rows: rows this chunk must produce.

    Returns:
        Column arrays, one entry per galaxy; ``num_rows`` holds that galaxy's row count and
        ``sel_sets`` a (G, 12) int8 array of its selection-set ids, sorted, 99 for unused
        slots; row ``j`` of a galaxy is selection set ``sel_sets[j // 2]``, replicate ``j % 2``.
    """
    rows = _rows_per_galaxy(rng, num_rows, cfg.selection_frac)
    num = len(rows)
    pop: Population = {"num_rows": rows}
    pop.update(_sky(rng, cfg, chunk, num))
    pop.update(_conditions(rng, pop["brick_key"]))
    pop.update(_lens_light(rng, num))
    pop.update(_lens_mass(rng, pop))
    is_control = rng.uniform(size=num) < cfg.control_frac
    is_confuser = is_control & (rng.uniform(size=num) < cfg.confuser_frac)
    kind = np.where(is_confuser, 1 + rng.integers(0, len(CONFUSER_KINDS), num), 0)
    pop["is_control"] = is_control
    pop["control_kind"] = kind.astype(np.int8)  # index into CONTROL_KINDS
    pop.update(_sources(rng, pop))
    u = rng.uniform(size=num)
    defect = np.zeros(num, np.int8)  # 0 none, 1 cutout failure, 2 NaN patch, 3 r-only
    defect[u < cfg.fail_frac] = 1
    defect[(u >= cfg.fail_frac) & (u < cfg.fail_frac + cfg.nan_frac)] = 2
    lo = cfg.fail_frac + cfg.nan_frac
    defect[(u >= lo) & (u < lo + cfg.r_only_frac)] = 3
    pop["defect"] = defect
    n_sel = -(-rows // 2)
    order_sel = np.argsort(rng.uniform(size=(num, NUM_SELECTION_SETS)), axis=1)
    # selection sets of each galaxy: the first n_sel ids of a random permutation, sorted
    chosen = np.where(np.arange(NUM_SELECTION_SETS) < n_sel[:, None], order_sel, 99)
    pop["sel_sets"] = np.sort(chosen, axis=1).astype(np.int8)  # 99 = unused slot
    pop["task_seed64"] = rng.integers(0, 2**63 - 1, num, dtype=np.int64)
    pop["galaxy_id"] = chunk * 1_000_000 + np.arange(num, dtype=np.int64)
    order = np.lexsort((pop["ra"], pop["brickname"].astype(str), pop["split_index"]))
    return {k: v[order] for k, v in pop.items()}
