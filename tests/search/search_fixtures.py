"""Builders for the search tests: unlabelled cutouts as parquet, FITS files and shards."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from astropy.io import fits

from haloscope.cli import main as haloscope
from haloscope.preprocess.decode import decode_stamps
from tests.infer.infer_fixtures import make_checkpoint, make_rows
from tests.preprocess.contract_rows import to_table

__all__ = [
    "TRUTH",
    "make_checkpoint",
    "unlabelled_table",
    "write_parquet",
    "write_fits",
    "write_catalog",
    "search",
    "search_command",
    "search_nodes",
    "free_port",
]

TRUTH = (
    "is_control",
    "theta_e_arcsec",
    "psf_fwhm_used_r",
    "arc_snr",
    "src_dmag",
    "src_reff_arcsec",
)
"""The labelled mock's truth columns, dropped to make an unlabelled table."""


def unlabelled_table(
    num_rows: int, seed: int = 0, *, all_ok: bool = True
) -> tuple[pa.Table, np.ndarray]:
    """The labelled mock rows minus truth columns, and their raw stamps (N, 3, 64, 64).

    ``all_ok=False`` keeps ``make_rows``' cutout_ok = 0 in row 4."""
    rows = make_rows(num_rows, seed)
    if all_ok:
        rows[4]["cutout_ok"] = 1
    table = to_table(rows).drop_columns(list(TRUTH))

    stamps, _ = decode_stamps(table.column("stamp_npz").to_pylist())
    return table, stamps


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def write_fits(stamps: np.ndarray, ids: list[str], folder: Path) -> Path:
    """One Legacy-Survey-like cutout per stamp: (3, 64, 64) float32, BAND0..2 = g, r, z."""
    folder.mkdir(parents=True, exist_ok=True)
    for stamp, ident in zip(stamps, ids, strict=True):
        hdu = fits.PrimaryHDU(np.asarray(stamp, np.float32))
        for i, band in enumerate("grz"):
            hdu.header[f"BAND{i}"] = band
        hdu.writeto(folder / f"{ident}.fits")
    return folder


def write_catalog(table: pa.Table, path: Path, ids: list[str]) -> Path:
    """CSV catalogue keyed by id with ra, dec and the meta columns."""
    cat = pa.table(
        {
            "id": ids,
            "ra": table.column("ra"),
            "dec": table.column("dec"),
            "psfsize_r": table.column("psfsize_r"),
            "psfdepth_r": table.column("psfdepth_r"),
        }
    )
    pcsv.write_csv(cat, path)
    return path


def search_here(*args: str) -> int:
    """``haloscope search`` in this process on the CPU (no workers, no bar); its exit code."""
    return haloscope(["search", *args, "--device", "cpu", "--no-progress", "--num-workers", "0"])


def error_line(capsys) -> str:
    """The one ``haloscope ...`` line a refused command printed (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("haloscope ")]
    assert len(lines) == 1, err
    return lines[0]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def search_command(
    *args: str, nproc: int = 1, nnodes: int = 1, node_rank: int = 0, master_port: int = 0
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``haloscope search ARGS``: one process, torchrun --standalone
    (nnodes 1, nproc > 1), or node ``node_rank`` of ``nnodes`` torchruns meeting at
    127.0.0.1:``master_port`` (a static rendezvous, as one torchrun per node on a cluster)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        launcher = [*torchrun, f"--nnodes={nnodes}", f"--node-rank={node_rank}",
                    "--master-addr=127.0.0.1", f"--master-port={master_port}",
                    "-m", "haloscope"]  # fmt: skip
    elif nproc > 1:
        launcher = [*torchrun, "--standalone", "-m", "haloscope"]
    else:
        launcher = [sys.executable, "-m", "haloscope"]
    # NOTE: one intra-op thread: oneDNN convolutions sum in a thread-count-dependent order
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [*launcher, "search", *args, "--device", "cpu", "--no-progress"], env


def search(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``haloscope search ARGS`` in a subprocess (torchrun with gloo when nproc > 1)."""
    argv, env = search_command(*args, nproc=nproc)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def search_nodes(
    *args: str, nnodes: int = 2, nproc: int = 1, timeout: float = 120
) -> list[subprocess.CompletedProcess]:
    """``haloscope search ARGS`` as ``nnodes`` torchruns started side by side, node 0 first,
    all with the same command line and rendezvous (a fresh port); one result per node.

    A node still running after ``timeout`` seconds (a hung rendezvous) is killed with its
    ranks (its own process group) and returns -SIGKILL, with what it had printed.
    """
    port = free_port()
    procs = []
    for node in range(nnodes):
        argv, env = search_command(
            *args, nproc=nproc, nnodes=nnodes, node_rank=node, master_port=port
        )
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, start_new_session=True))  # fmt: skip
    deadline = time.monotonic() + timeout
    outputs: dict[int, tuple[str, str]] = {}
    try:
        for i, proc in enumerate(procs):
            outputs[i] = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for i, proc in enumerate(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if i not in outputs:
                outputs[i] = proc.communicate()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, *outputs[i]) for i, p in enumerate(procs)
    ]
