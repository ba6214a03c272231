"""The scores table (``docs/architecture.md`` "Scores table"): schema, gathering, atomic write.

Rows are sorted by ``(task_id, ra, dec, logit)`` before writing, so the file is the same
whatever the number of ranks and whichever source (parquet or shards) produced it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from haloscope.atomic import atomic_path
from haloscope.infer.predict import sigmoid32
from haloscope.train.dist import all_gather_1d

__all__ = ["SCORES_SCHEMA", "build_scores_table", "concat_tables", "gather_tables", "write_scores"]

log = logging.getLogger(__name__)

SCORES_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("ra", pa.float64()),
        ("dec", pa.float64()),
        ("brickname", pa.string()),
        ("split", pa.string()),
        ("label", pa.int8()),
        ("is_hard_neg", pa.bool_()),
        ("theta_e_arcsec", pa.float32()),
        ("psf_fwhm_r", pa.float32()),
        ("theta_over_psf", pa.float32()),
        ("psfsize_r", pa.float32()),
        ("psfdepth_r", pa.float32()),
        ("arc_snr", pa.float32()),
        ("src_dmag", pa.float32()),
        ("arc_snr_sum", pa.float32()),
        ("magnification", pa.float32()),
        ("arc_lens_flux_ratio", pa.float32()),
        ("tangential_stretch", pa.float32()),
        ("radial_stretch", pa.float32()),
        ("control_kind", pa.string()),
        ("logit", pa.float32()),
        ("score", pa.float32()),
        ("model", pa.string()),
    ]
)
_FROM_BATCH = [n for n in SCORES_SCHEMA.names if n not in ("split", "logit", "score", "model")]


def build_scores_table(
    parts: Iterable[tuple[dict[str, np.ndarray], np.ndarray]], *, split: str, model: str
) -> pa.Table:
    """Assemble scored batches into one table in ``SCORES_SCHEMA`` (unsorted).

    Args:
        parts: ``(columns, logits)`` per batch, as yielded by ``predict.score_batches``.
        split: value of the ``split`` column.
        model: value of the ``model`` column.
    """
    cols: dict[str, list[np.ndarray]] = {name: [] for name in _FROM_BATCH}
    logits: list[np.ndarray] = []
    for columns, logit in parts:
        for name in _FROM_BATCH:
            cols[name].append(columns[name])
        logits.append(np.asarray(logit, dtype=np.float32))
    n = int(sum(len(x) for x in logits))
    arrays: dict[str, pa.Array] = {}
    for name in _FROM_BATCH:
        values = np.concatenate(cols[name]) if cols[name] else np.array([], dtype=object)
        # NOTE: numeric NaN stays NaN (not null): "NaN where not defined" in the contract.
        data = values.tolist() if values.dtype == object else values
        arrays[name] = pa.array(data, type=SCORES_SCHEMA.field(name).type)
    logit = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    arrays["split"] = pa.array([split] * n, pa.string())
    arrays["logit"] = pa.array(logit, pa.float32())
    arrays["score"] = pa.array(sigmoid32(logit), pa.float32())
    arrays["model"] = pa.array([model] * n, pa.string())
    return pa.table([arrays[name] for name in SCORES_SCHEMA.names], schema=SCORES_SCHEMA)


def concat_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate per-rank tables and sort rows by (task_id, ra, dec, logit)."""
    table = pa.concat_tables(list(tables)) if tables else SCORES_SCHEMA.empty_table()
    order = [
        ("task_id", "ascending"),
        ("ra", "ascending"),
        ("dec", "ascending"),
        ("logit", "ascending"),
    ]
    return table.sort_by(order).combine_chunks()


def _to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def gather_tables(table: pa.Table, env) -> list[pa.Table] | None:
    """Collect every rank's table on rank 0 (through ``train.dist.all_gather_1d``).

    Each rank's table travels as Arrow IPC bytes in a uint8 tensor; lengths are gathered
    first so rank 0 can split the concatenation.

    Args:
        table: this rank's scored rows.
        env: the ``train.dist.DistEnv`` of this process.

    Returns:
        The per-rank tables in rank order on rank 0; None on other ranks.
    """
    if not env.is_distributed:
        return [table]
    # NOTE: gloo/nccl move the bytes on env.device; a 2M-row table is ~200 MB, fine on a GPU.
    payload = torch.frombuffer(bytearray(_to_bytes(table)), dtype=torch.uint8)
    sizes = all_gather_1d(torch.tensor([payload.numel()], dtype=torch.int64), env).tolist()
    blob = all_gather_1d(payload, env).cpu().numpy().tobytes()
    if not env.is_main:
        return None
    tables, start = [], 0
    for size in sizes:
        tables.append(pa.ipc.open_stream(blob[start : start + size]).read_all())
        start += size
    return tables


def write_scores(table: pa.Table, path: str | Path, *, metadata: dict[str, str]) -> Path:
    """Write the scores parquet atomically (``haloscope.atomic``: temp sibling, rename, umask).

    Args:
        table: rows in ``SCORES_SCHEMA``.
        path: destination ``.parquet``.
        metadata: key/values stored in the parquet schema metadata (provenance).

    Returns:
        The written path.

    Raises:
        OSError: naming ``path`` (full disk, read-only folder); ``path`` is left as it was.
    """
    path = Path(path)
    meta = {
        **(table.schema.metadata or {}),
        **{k.encode(): v.encode() for k, v in metadata.items()},
    }
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")
    return path
