"""Hard-negative mining: high-scoring controls of earlier models -> a lookup parquet.

Fixes the seed's mining flaws (``reference/original_pipeline.md`` section 4.3, B11):
only controls (``label == 0``) are mined, never from the test split (a scores file that
holds any test row is refused), above an explicit ``min_score``, top-k per model, merged
over models and de-duplicated by position key ``(round(ra, 6), round(dec, 6))`` (the
converter's own key, :func:`haloscope.preprocess.hardneg.position_keys`), with an
optional per-model floor on the count (``min_count``). An empty result is an error, because
an empty lookup silently disables hard negatives.

Output layout: "Hard-negative lookup" of ``docs/architecture.md``: ``ra_key, dec_key,
ra, dec, max_score, num_models, models, split``.

The seed's scores tables are accepted: labels from ``is_control`` (see
:func:`haloscope.evaluate.scores.resolve_labels`) and the split from ``region_split`` when
there is no ``split`` column.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from haloscope.atomic import atomic_path, check_writable
from haloscope.errors import ConfigError, DataError
from haloscope.evaluate.scores import ScoresFrame, load_scores
from haloscope.preprocess.hardneg import key_columns, position_keys

__all__ = ["MINABLE_SPLITS", "LOOKUP_SCHEMA", "mine_frames", "mine_hard_negatives", "write_lookup"]

logger = logging.getLogger(__name__)

MINABLE_SPLITS: tuple[str, ...] = ("train", "val")
SPLIT_COLUMNS: tuple[str, ...] = ("split", "region_split")  # ours, then the seed's
LOOKUP_SCHEMA = pa.schema(
    [
        ("ra_key", pa.float64()),
        ("dec_key", pa.float64()),
        ("ra", pa.float64()),
        ("dec", pa.float64()),
        ("max_score", pa.float64()),
        ("num_models", pa.int32()),
        ("models", pa.string()),
        ("split", pa.string()),
    ]
)


def _check_splits(splits: Sequence[str]) -> None:
    bad = [s for s in splits if s not in MINABLE_SPLITS]
    if "test" in bad:
        raise ConfigError(
            "--split test is refused: mining the test split leaks it into training "
            f"(mine from {' or '.join(MINABLE_SPLITS)})"
        )
    if bad or not splits:
        raise ConfigError(f"--split must be among {', '.join(MINABLE_SPLITS)}, got {list(splits)}")


def _model_name(frame: ScoresFrame) -> str:
    models = frame.columns.get("model")
    if models is not None:
        names = {m for m in models.tolist() if m}
        if len(names) > 1:
            raise DataError(
                f"{frame.source}: column 'model' holds several models {sorted(names)}; "
                "give one scores file per model"
            )
        if names:
            return str(names.pop())
    path = Path(frame.source)  # no model column: "<run folder>/<file stem>"
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def _split_column(frame: ScoresFrame) -> np.ndarray:
    column = next((c for c in SPLIT_COLUMNS if c in frame.columns), None)
    if column is None:
        raise DataError(
            f"{frame.source}: missing column 'split' (or the seed's 'region_split'); "
            "mining must know which rows are test rows"
        )
    return frame.columns[column]


def _candidates(
    frame: ScoresFrame, splits: Sequence[str], min_score: float, top_k: int, min_count: int = 0
) -> dict:
    split = _split_column(frame)
    if (split == "test").any():
        raise DataError(
            f"{frame.source}: {int((split == 'test').sum())} rows have split == 'test'; "
            "test scores are never mined (score the train or val split)"
        )
    base = (frame.labels == 0) & np.isin(split, list(splits))
    score = frame.columns["score"].astype(np.float64)[base]
    ra = frame.columns["ra"].astype(np.float64)[base]
    dec = frame.columns["dec"].astype(np.float64)[base]
    keys = position_keys(ra, dec)  # the converter's key: a mined position is always found
    split, rank = split[base], frame.ranking[base]
    # best first by the ranked value (logit when present: fp32 scores saturate and tie
    # near 1), then by position, so duplicates keep their best and ties are deterministic
    order = np.lexsort((keys, -rank))
    _, first = np.unique(keys[order], return_index=True)
    ranked = order[np.sort(first)]  # one row per position, best first
    passing = score > min_score
    above = ranked[passing[ranked]]
    filled = above.size < min_count
    eligible = np.ones_like(passing) if filled else passing  # every control the rule admits
    if not (np.isfinite(ra[eligible]).all() and np.isfinite(dec[eligible]).all()):
        raise DataError(f"{frame.source}: columns 'ra'/'dec' hold NaN for mined controls")
    best = ranked[: min(top_k, min_count)] if filled else above[:top_k]
    return {
        "key": keys[best],
        "ra": ra[best],
        "dec": dec[best],
        "score": score[best],
        "split": split[best],
        "num_above": int(above.size),
        "filled": bool(filled),
    }


def _merge(per_model: dict[str, dict]) -> pa.Table:
    merged: dict[int, dict] = {}
    for model, cand in per_model.items():
        for i in range(cand["score"].size):
            key = int(cand["key"][i])
            entry = merged.setdefault(key, {"models": set(), "splits": set(), "max_score": -1.0})
            entry["models"].add(model)
            entry["splits"].add(str(cand["split"][i]))
            if cand["score"][i] > entry["max_score"]:
                entry |= {
                    "max_score": float(cand["score"][i]),
                    "ra": float(cand["ra"][i]),
                    "dec": float(cand["dec"][i]),
                }
    keys = sorted(merged, key=lambda k: (-merged[k]["max_score"], k))
    rows = [merged[k] for k in keys]
    ra_key, dec_key = key_columns(np.array(keys, dtype=np.int64))
    return pa.table(
        {
            "ra_key": ra_key,
            "dec_key": dec_key,
            "ra": [r["ra"] for r in rows],
            "dec": [r["dec"] for r in rows],
            "max_score": [r["max_score"] for r in rows],
            "num_models": [len(r["models"]) for r in rows],
            "models": [",".join(sorted(r["models"])) for r in rows],
            "split": [",".join(sorted(r["splits"])) for r in rows],
        },
        schema=LOOKUP_SCHEMA,
    )


def _log_candidates(source: str, name: str, cand: dict, min_score: float, min_count: int) -> None:
    logger.info("%s: %d controls above %.3g (model %s)", source, cand["num_above"], min_score, name)
    if cand["filled"]:
        lowest = float(cand["score"].min()) if cand["score"].size else float("nan")
        values = (source, cand["num_above"], min_score, min_count, cand["score"].size, lowest)
        logger.warning(
            "%s: only %d controls above --min-score %.3g, fewer than --min-count %d: took the "
            "%d highest-scoring controls (lowest score %.4g)",
            *values,
        )


def mine_frames(
    frames: Sequence[ScoresFrame],
    min_score: float = 0.9,
    top_k: int = 20_000,
    splits: Sequence[str] = ("train",),
    min_count: int = 0,
) -> pa.Table:
    """Select hard negatives from validated scores tables (one per model).

    Args:
        frames: scores of earlier models; each needs ``ra, dec, score``, a label column and
            ``split`` (or ``region_split``).
        min_score: keep controls with ``score > min_score``.
        top_k: keep at most this many distinct positions per model (highest scores).
        splits: splits to mine from (``train`` and/or ``val``; ``test`` is refused).
        min_count: when fewer than this many controls of a model pass ``min_score``, take
            that model's ``min(top_k, min_count)`` highest-scoring controls instead (a
            model that scores its own training split rarely passes 0.9; without this, a
            handful of hard negatives would make "Gen4" a copy of Gen3). 0: off.

    Returns:
        The lookup table (``LOOKUP_SCHEMA``), highest ``max_score`` first.

    Raises:
        ConfigError: bad ``splits``/``top_k``/``min_score``.
        DataError: test rows in an input, duplicate model names, or an empty result.
    """
    _check_splits(splits)
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if not 0.0 <= min_score < 1.0:
        raise ConfigError(f"--min-score must be in [0, 1), got {min_score}")
    if min_count < 0:
        raise ConfigError(f"--min-count must be >= 0, got {min_count}")
    per_model: dict[str, dict] = {}
    for frame in frames:
        name = _model_name(frame)
        if name in per_model:
            raise DataError(f"{frame.source}: model name {name!r} given twice")
        per_model[name] = _candidates(frame, splits, min_score, top_k, min_count)
        _log_candidates(frame.source, name, per_model[name], min_score, min_count)
    table = _merge(per_model)
    if table.num_rows == 0:
        raise DataError(
            f"no control in split(s) {','.join(splits)} scored above --min-score {min_score} "
            "in any input; a hard-negative lookup must not be empty (try a lower --min-score)"
        )
    return table


def write_lookup(table: pa.Table, path: str | Path, provenance: dict) -> Path:
    """Write the lookup parquet atomically, with the mining settings in its metadata.

    Args:
        table: output of :func:`mine_frames`.
        path: destination parquet.
        provenance: JSON-able settings stored under the ``haloscope.mine`` key.

    Returns:
        The path written.
    """
    path = Path(path)
    table = table.replace_schema_metadata({"haloscope.mine": json.dumps(provenance)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def mine_hard_negatives(
    score_paths: Sequence[str | Path],
    out: str | Path,
    min_score: float = 0.9,
    top_k: int = 20_000,
    splits: Sequence[str] = ("train",),
    min_count: int = 0,
) -> pa.Table:
    """Read scores files, mine, and write the lookup parquet (the ``mine`` verb).

    Args:
        score_paths: one scores parquet per earlier model.
        out: lookup parquet to write.
        min_score: keep controls with ``score > min_score``.
        top_k: per-model cap on distinct positions.
        splits: splits to mine from.
        min_count: per-model floor on the count (see :func:`mine_frames`).

    Returns:
        The lookup table written.

    Raises:
        OSError: ``out`` cannot be written (checked before reading the scores).
    """
    _check_splits(splits)
    check_writable(out)
    frames = [load_scores(p, require=("ra", "dec"), need_both_classes=False) for p in score_paths]
    table = mine_frames(frames, min_score, top_k, splits, min_count)
    provenance = {
        "scores": [Path(p).name for p in score_paths],
        "min_score": min_score,
        "top_k": top_k,
        "min_count": min_count,
        "splits": list(splits),
        "lowest_score": float(min(table.column("max_score").to_pylist())),
        "label_columns": {Path(f.source).name: f.label_column for f in frames},
    }
    write_lookup(table, out, provenance)
    logger.info("wrote %d hard negatives to %s", table.num_rows, out)
    return table
