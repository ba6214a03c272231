"""``haloscope shards``: convert parquet splits into WebDataset shards (or verify shards)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from haloscope.argparse_util import ConfigCLI
from haloscope.config import narrow
from haloscope.errors import ConfigError
from haloscope.log import setup_logging
from haloscope.preprocess.convert.core import ConvertConfig
from haloscope.shards.remote import is_url

__all__ = ["CLI", "ShardsOptions", "main", "parse_config", "slurm_task"]

log = logging.getLogger(__name__)

_DESCRIPTION = """\
Convert <data>/region_split=<split>/*.parquet into WebDataset shards under <out>/<split>/
(packed records of normalised float16 stamps, meta, labels and ids), with quality gates,
de-duplication, hard-negative duplication and a global shuffle. manifest.json per split is
written last; val/test also get stamps.zarr. Re-running resumes. See docs/shards.md."""


def slurm_task(env: dict[str, str] | None = None) -> tuple[int, int]:
    """``(task_index, num_tasks)`` from a Slurm array job's variables, else ``(0, 1)``."""
    env = dict(os.environ if env is None else env)
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return 0, 1
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return task, int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError:
        raise ConfigError("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT are not integers") from None


@dataclass(frozen=True, kw_only=True)
class ShardsOptions(ConvertConfig):
    """A ``ConvertConfig``, or with --verify a check of existing shards (``haloscope shards``)."""

    data: Path | None = None  # type: ignore[assignment]  # optional here: --verify needs none
    out: str  # type: ignore[assignment]  # a folder or an s3:// URL
    """Output root, one directory per split: a folder, or an s3:// URL (the conversion runs
    in --staging-dir, then each split is uploaded, its manifest last; docs/shards.md)."""
    staging_dir: Path | None = None
    """With an s3:// --out: the local folder that is converted into (and resumed from)
    before the upload."""
    verify: bool = False
    """Do not convert: check every shard of --out against its manifest (sha256, structure,
    counts)."""
    unlabelled: bool = False
    """Convert unlabelled cutouts (--data: a parquet file, folder or glob with stamp_npz, ra,
    dec and the meta columns; no truth needed) into <out>/search/, in input order, labels
    unknown, for `haloscope search` (train refuses them)."""

    def __post_init__(self) -> None:
        if self.data is None and not self.verify:
            raise ValueError("--data is required (the parquet root) unless --verify is given")
        if is_url(self.out) and not str(self.out).lower().startswith(("s3://", "s3a://")):
            raise ValueError(
                f"--out {self.out}: only s3:// URLs are written directly; convert "
                "into a local folder and sync it afterwards (docs/shards.md)"
            )
        if is_url(self.out) and (self.staging_dir is None or self.verify):
            raise ValueError(
                f"--out {self.out}: an s3:// --out needs --staging-dir LOCAL (the "
                "conversion runs there, then is uploaded) and cannot be --verify'd"
            )
        super().__post_init__()

    @property
    def local_out(self) -> Path:
        """The folder the conversion writes: --out, or --staging-dir for an s3:// --out."""
        return Path(self.staging_dir) if is_url(self.out) and self.staging_dir else Path(self.out)


CLI = ConfigCLI("shards", ShardsOptions, _DESCRIPTION)


def parse_config(argv: list[str], env: dict[str, str] | None = None) -> ShardsOptions:
    """The resolved options of a command line; a Slurm array job's task index and count are
    the defaults of --task-index and --num-tasks (under --config and the flags).

    Raises:
        ConfigError: an invalid flag, config key or value, naming it.
    """
    task, tasks = slurm_task(env)
    return CLI.parse(
        argv,
        layers=[{"task_index": task, "num_tasks": tasks}],
        fixed={"command": ("haloscope", "shards", *argv)},
    )


def main(argv: list[str]) -> int:
    """Entry point of ``haloscope shards``."""
    cfg = parse_config(argv)
    setup_logging()
    # NOTE: each mode's module imported after parsing: zarr, torch off `shards --help`.
    if cfg.verify:
        from haloscope.shards.verify import verify_shards

        for line in verify_shards(cfg.local_out, list(cfg.splits)):
            print(line)
        return 0
    if cfg.unlabelled:
        from haloscope.preprocess.convert.unlabelled import write_unlabelled_shards

        path = write_unlabelled_shards(
            cfg.data,
            cfg.local_out,
            meta_cols=cfg.meta_cols,
            norm_method=cfg.norm_method,
            shard_samples=cfg.shard_samples,
            record_samples=cfg.record_samples,
            batch_rows=cfg.batch_rows,
            command=cfg.command,
        )
        print(f"search: {path}", file=sys.stdout)
        return _upload(cfg)
    from haloscope.preprocess.convert.run import convert

    written = convert(replace(narrow(cfg, ConvertConfig), out=cfg.local_out))
    for split, path in written.items():
        print(f"{split}: {path}", file=sys.stdout)
    return _upload(cfg) if written else 0


def _upload(cfg: ShardsOptions) -> int:
    """With an s3:// --out, publish the converted splits (each manifest last)."""
    if is_url(cfg.out):
        # NOTE: upload (botocore) only for an s3:// --out, after parsing.
        from haloscope.shards.upload import upload_shards

        for line in upload_shards(cfg.local_out, cfg.out):
            print(line, file=sys.stdout)
    return 0
