"""One search: process group, out folder and fingerprint, this rank's chunks, then the outputs.

Resume. ``--out`` holds ``search.json`` with a fingerprint of the checkpoints (sha256), the
input (files, sizes, mtimes, or the shard split's folder or URL and its shard sha256s), TTA
and precision; a re-run with another fingerprint is refused (one line), so parts of two
searches never mix. A chunk is finished exactly when its part file exists (written
atomically), so a search killed at any point and re-run scores only the chunks without one
and never writes a chunk twice; temporary files of a killed run are removed first. The world
size may change between runs (parts are found by chunk number, whichever rank wrote them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from haloscope import __version__
from haloscope.atomic import atomic_write_text, check_writable, is_temp_name
from haloscope.errors import ConfigError, HaloscopeError
from haloscope.infer.search import engine, merge
from haloscope.infer.search.config import SearchConfig
from haloscope.infer.search.inputs import SearchInput, open_input
from haloscope.log import setup_logging
from haloscope.shards.remote import is_url
from haloscope.shards.write import sha256_file
from haloscope.train.dist import (
    all_gather_object,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
)

__all__ = [
    "CACHE_NAME",
    "FINGERPRINT_NAME",
    "cache_dir",
    "fingerprint",
    "prepare_out",
    "run_search",
]

log = logging.getLogger(__name__)
FINGERPRINT_NAME = "search.json"
CACHE_NAME = "shard-cache"
"""A URL input's shard cache inside --out when no --cache-dir is given."""


def _sha256(path: str) -> str:
    return sha256_file(Path(path))


def fingerprint(cfg: SearchConfig, source_identity: dict[str, Any]) -> dict[str, Any]:
    """What a search's parts depend on, and its hash."""
    doc = {
        "checkpoints": [{"path": str(Path(p).resolve()), "sha256": _sha256(p)} for p in cfg.ckpt],
        "input": source_identity,
        "tta": cfg.tta,
        "precision": cfg.precision,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest, **doc}


def prepare_out(out: Path, doc: dict[str, Any]) -> int:
    """Create ``out``/parts, write or check the fingerprint, drop temporaries; returns the
    number of finished chunks found.

    Raises:
        ConfigError: ``out`` holds another search (other checkpoints, input or TTA), or files
            that are not a search's.
    """
    path = out / FINGERPRINT_NAME
    if path.is_file():
        try:
            have = json.loads(path.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            have = None
        if have != doc["fingerprint"]:
            raise ConfigError(
                f"--out {out} holds a search of other checkpoints, input or --tta "
                f"({path}); re-run with that search's flags to resume it, or "
                "give a new --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"--out {out} exists and is not a search folder (no {FINGERPRINT_NAME});"
            " give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not path.is_file():  # first, so a folder with parts always says whose they are
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    (out / "parts").mkdir(exist_ok=True)
    for tmp in (out / "parts").iterdir():
        if is_temp_name(tmp.name):  # a killed run's unfinished part
            tmp.unlink(missing_ok=True)
    return len(engine.done_chunks(out / "parts"))


def _prepare_on_main(out: Path, doc: dict[str, Any], env) -> int:
    """``prepare_out`` on rank 0; its refusal reaches every rank (no rank left waiting)."""
    resumed, error = 0, None
    if env.is_main:
        try:
            resumed = prepare_out(out, doc)
        except (HaloscopeError, OSError) as exc:
            error = exc
    error = broadcast_object(error, env)
    if error is not None:
        raise error
    return resumed


def _gather_rows(rows: int, env) -> int:
    return sum(int(r) for r in all_gather_object(rows, env))


def cache_dir(cfg: SearchConfig) -> Path:
    """Where a URL input's shards are cached: --cache-dir, else ``OUT/shard-cache``."""
    return Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(cfg.out) / CACHE_NAME


def _open(cfg: SearchConfig, env, batch: int) -> tuple[engine.Ensemble, SearchInput]:
    """The ensemble of ``cfg.ckpt`` and the input read with its preprocessing."""
    ensemble = engine.load_ensemble(
        cfg.ckpt,
        env.device,
        use_bf16=cfg.use_bf16(env.device.type),
        step=cfg.step,
        batch_size=batch,
    )
    settings = {**ensemble.settings, "ckpt": cfg.ckpt[0]}
    source = open_input(
        cfg.input,
        cfg.input_kind,
        settings,
        id_column=cfg.id_column,
        catalog=cfg.catalog,
        chunk_size=cfg.chunk_size,
        cache_dir=cache_dir(cfg),
    )
    return ensemble, source


def _score(
    cfg: SearchConfig, env, ensemble: engine.Ensemble, source: SearchInput, mine: list, batch: int
) -> tuple[int, int, float]:
    """Score this rank's chunks into parts; ``(rows, steady cutouts/s, wall s)`` of all ranks."""
    t0 = time.perf_counter()
    writer = engine.PartWriter(Path(cfg.out) / "parts", env.rank, len(cfg.ckpt))
    pieces = engine.iter_pieces(
        source, mine, batch, cfg.num_workers, pin_memory=env.device.type == "cuda"
    )
    rows, steady = engine.score_stream(
        ensemble,
        pieces,
        writer,
        env.device,
        tta=cfg.tta == "d4",
        progress=cfg.progress and env.is_main,
        total_rows=sum(c.num_rows for c in mine),
    )
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    wall_s = time.perf_counter() - t0
    total = _gather_rows(rows, env)
    steady_total = _gather_rows(round(steady or 0), env)  # ranks run side by side
    return total, steady_total, wall_s


def _write_summary(
    cfg: SearchConfig,
    env,
    source: SearchInput,
    chunks: list,
    *,
    resumed: int,
    total: int,
    steady_total: int,
    wall_s: float,
) -> None:
    """Rank 0: merge the parts into the outputs and log what was scored."""
    out = Path(cfg.out)
    summary = {
        "haloscope_version": __version__,
        "input": cfg.input,
        "input_kind": source.kind,
        "checkpoints": list(cfg.ckpt),
        "tta": cfg.tta,
        "device": str(env.device),
        "world_size": env.world_size,
        "batch_size": cfg.batch_size,
        "chunks": len(chunks),
        "chunks_resumed": resumed,
        "rows_this_run": total,
        "scoring_wall_s": round(wall_s, 3),
        "cutouts_per_s": round(total / wall_s, 1) if total and wall_s > 0 else None,
        "steady_cutouts_per_s": steady_total or None,
    }
    summary = merge.write_outputs(
        out,
        source,
        chunks,
        num_models=len(cfg.ckpt),
        top_n=cfg.top_n,
        grades=cfg.grades,
        summary=summary,
    )
    rate = summary["cutouts_per_s"]
    speed = f"{rate} cutouts/s this run" if rate else "every chunk was done earlier (resumed)"
    log.info(
        "%s: %d scored, %d rejected (%s); %s",
        out,
        summary["scored"],
        summary["rejected"],
        ", ".join(f"{k}={v}" for k, v in summary["rejected_by_reason"].items()) or "none",
        speed,
    )


def run_search(cfg: SearchConfig) -> Path | None:
    """Score ``cfg.input`` into ``cfg.out``; returns the candidates path on rank 0.

    Raises:
        ConfigError: bad flags, a foreign --out, --catalog misuse.
        CheckpointError: unreadable checkpoints or an ensemble of different preprocessing.
        ContractError / DataError: unreadable input, missing columns, incompatible shards.
    """
    env = init_distributed(cfg.device)
    setup_logging(env.rank)
    out = Path(cfg.out)
    try:
        batch = cfg.per_rank_batch(env.world_size)
        check_writable(out, folder=True)  # every rank: none is left waiting for another
        if cfg.cache_dir is not None and not is_url(cfg.input):
            log.warning("--cache-dir %s unused: --input %s is local", cfg.cache_dir, cfg.input)
        ensemble, source = _open(cfg, env, batch)
        chunks = source.chunks()
        doc = fingerprint(cfg, source.identity())
        resumed = _prepare_on_main(out, doc, env)
        done = engine.done_chunks(out / "parts")
        mine = [c for c in chunks if c.index % env.world_size == env.rank and c.index not in done]
        log.info(
            "%s: %d chunks (%d rows), %d already finished; %d model(s)%s",
            cfg.input,
            len(chunks),
            sum(c.num_rows for c in chunks),
            len(done),
            len(cfg.ckpt),
            ", D4 TTA" if cfg.tta == "d4" else "",
        )
        total, steady_total, wall_s = _score(cfg, env, ensemble, source, mine, batch)
        barrier(env)
        if not env.is_main:
            return None
        _write_summary(
            cfg,
            env,
            source,
            chunks,
            resumed=resumed,
            total=total,
            steady_total=steady_total,
            wall_s=wall_s,
        )
        return out / "candidates.parquet"
    finally:
        shutdown(env)
