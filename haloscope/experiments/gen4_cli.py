"""``haloscope gen4``: the seed's Gen3 -> mine -> Gen4 experiment end to end, resumable.

    haloscope gen4 --out runs/gen4_experiment --rows 60000 --workers 16     # full mock scale
    haloscope gen4 --out /tmp/g4 --tiny                                     # minutes on a CPU

Stages (each a real ``haloscope`` command; see ``gen4.py``): simulate -> shards
(no hard negatives) -> train Gen3 -> infer Gen3 on train -> mine -> shards of train with the
lookup -> reuse val/test shards (verified) -> train Gen4 -> infer both on test -> eval both
-> DIR/gen3_vs_gen4.{md,csv,json}. Re-running the same command skips finished stages.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

from haloscope.argparse_util import ConfigCLI
from haloscope.atomic import atomic_write_text
from haloscope.config import option
from haloscope.errors import ConfigError

__all__ = ["CLI", "Gen4Config", "PRESETS", "main", "parse_config"]

log = logging.getLogger(__name__)
_DESCRIPTION = """\
The seed's Gen3 -> mine -> Gen4 experiment end to end (docs/inference.md). Stages, each a real
`haloscope` command: simulate (unless --data) -> shards without hard negatives -> train Gen3 ->
infer Gen3 on the train split -> mine -> train shards with the lookup -> reuse the val/test
shards (sha256-verified) -> train Gen4 -> infer both on test -> eval both ->
OUT/gen3_vs_gen4.{md,csv,json}. Re-running the same command resumes: finished stages are
skipped, training continues from last.pt. Logs per stage in OUT/logs/. The defaults are the
full mock scale (`make gen4`); --tiny runs in minutes on a CPU. --workers is the processes of
simulate and shards, --num-workers the loader workers per rank of train and infer."""


@dataclass(frozen=True, kw_only=True)
class Gen4Config:
    """Scale and training settings of one experiment (the flags of ``haloscope gen4``)."""

    out: Path = option(metavar="DIR")
    """Experiment folder (re-run the same command to resume)."""
    data: Path | None = None
    """Existing parquet root (mock or DR10); None: simulate ``rows`` rows into out/data."""
    rows: int = 60000
    """Mock survey rows (all splits) when simulating."""
    seed: int = 0
    """Seed of the mock, the shard shuffle and both trainings (the same for Gen3 and Gen4)."""
    workers: int = option(2, flag="--workers")
    """Processes of simulate and shards (their --num-workers); not the loader workers."""
    epochs: int = 50
    """Maximum epochs of each training."""
    batch_size: int = 256
    """Global training batch (all ranks together)."""
    arch: str = "convnext_tiny"
    """timm ConvNeXt of both generations."""
    hard_neg_weight: int = 5
    """Copies of each mined control in the Gen4 train shards."""
    min_score: float = 0.9
    """Mine controls scored above this."""
    top_k: int = 20000
    """Mine at most this many controls."""
    min_count: int = 20000
    """Mine at least min(top_k, min_count) controls: the highest-scoring ones when fewer pass
    min_score (0: off). A Gen3 scoring its own training split rarely passes 0.9."""
    infer_batch_size: int = 1024
    """Global batch of every inference (all ranks together)."""
    num_workers: int = 2
    """Loader workers per rank in train and infer."""
    device: str = "auto"
    """Device of train and infer: auto, cpu, cuda."""
    nproc_per_node: int = 1
    """Processes per node for train and infer (torchrun when > 1)."""
    train_args: tuple[str, ...] = option((), parse=shlex.split, metavar="'FLAGS'")
    """Extra `haloscope train` flags for both generations, one quoted string (one flag alone
    needs the = form: --train-args=--compile)."""
    sim_args: tuple[str, ...] = option((), parse=shlex.split, metavar="'FLAGS'")
    """Extra `haloscope simulate` flags, one quoted string (e.g. --selection-frac 0)."""
    quiet: bool = False
    """Stage output to OUT/logs/ only, not also to stderr."""

    def scale(self) -> dict:
        """Settings that must not change when a run is resumed."""
        keep = ("data", "rows", "seed", "epochs", "batch_size", "arch", "hard_neg_weight",
                "min_score", "top_k", "min_count", "train_args", "sim_args")  # fmt: skip
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in ((k, getattr(self, k)) for k in keep)}  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("rows", "workers", "epochs", "batch_size", "top_k", "infer_batch_size",
                     "nproc_per_node", "hard_neg_weight"):  # fmt: skip
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.min_count < 0:
            raise ValueError(f"--min-count must be >= 0, got {self.min_count}")
        if not 0.0 <= self.min_score < 1.0:
            raise ValueError(f"--min-score must be in [0, 1), got {self.min_score}")


# Named layers under --config; the defaults are the full mock scale (`make gen4`, and the GPU
# run with --rows ~2M). Flags given explicitly always win.
PRESETS: dict[str, dict] = {
    "none": {},
    # a few minutes on 2 CPU cores
    "tiny": {"rows": 3000, "epochs": 2, "batch_size": 64, "arch": "convnext_atto",
             # a 2-epoch model rarely scores a control > 0.9: mine its top controls instead
             "min_score": 0.0, "top_k": 60, "min_count": 0, "infer_batch_size": 256,
             "num_workers": 0,
             "train_args": ("--max-steps-per-epoch", "8", "--val-batch-size", "256",
                            "--warmup-steps", "4", "--early-stopping-patience", "0"),
             # 2 rows per galaxy instead of ~9: more distinct samples per simulated row
             "sim_args": ("--selection-frac", "0")},
}  # fmt: skip

CLI = ConfigCLI("gen4", Gen4Config, _DESCRIPTION, presets=PRESETS,
                preset_switches={"--tiny": "tiny"})  # fmt: skip


def parse_config(argv: list[str]) -> Gen4Config:
    """The resolved config of a command line: defaults < --preset/--tiny < --config < flags.

    Raises:
        ConfigError: an invalid value, naming the flag.
    """
    return CLI.parse(argv)


def _check_resume(cfg: Gen4Config) -> None:
    """Store the settings on the first run; refuse a resume with different ones."""
    path = cfg.out / "gen4_config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in cfg.scale().items() if saved.get(k) != v}
        if diff:
            pairs = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"--out {cfg.out} holds an experiment with other settings ({pairs}); "
                              "use a new --out or the same flags to resume")  # fmt: skip
        return
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cfg.scale(), indent=1) + "\n")


def main(argv: list[str]) -> int:
    """Run (or resume) the experiment; returns the exit status."""
    import time

    from haloscope.experiments.gen4 import plan_experiment, run_stages
    from haloscope.log import setup_logging

    cfg = parse_config(argv)
    setup_logging(0)
    if cfg.data is not None and not cfg.data.is_dir():
        raise ConfigError(f"--data {cfg.data}: no such directory")
    _check_resume(cfg)
    t0 = time.perf_counter()
    records = run_stages(cfg.out, plan_experiment(cfg), nproc_per_node=cfg.nproc_per_node,
                         echo=not cfg.quiet)  # fmt: skip
    ran = [r for r in records if not r["skipped"]]
    log.info("gen4 experiment done in %.1f s (%d stage(s) run, %d skipped): %s",
             time.perf_counter() - t0, len(ran), len(records) - len(ran),
             cfg.out / "gen3_vs_gen4.md")  # fmt: skip
    return 0
