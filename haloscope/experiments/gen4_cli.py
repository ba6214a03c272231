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
import time

from haloscope.argparse_util import ConfigCLI
from haloscope.atomic import atomic_write_text
from haloscope.errors import ConfigError
from haloscope.experiments.config import PRESETS, Gen4Config
from haloscope.experiments.gen4 import plan_experiment
from haloscope.experiments.stages import run_stages
from haloscope.log import setup_logging

__all__ = ["CLI", "main", "parse_config"]

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


CLI = ConfigCLI(
    "gen4", Gen4Config, _DESCRIPTION, presets=PRESETS, preset_switches={"--tiny": "tiny"}
)


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
            raise ConfigError(
                f"--out {cfg.out} holds an experiment with other settings ({pairs}); "
                "use a new --out or the same flags to resume"
            )
        return
    cfg.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cfg.scale(), indent=1) + "\n")


def main(argv: list[str]) -> int:
    """Run (or resume) the experiment; returns the exit status."""
    cfg = parse_config(argv)
    setup_logging(0)
    if cfg.data is not None and not cfg.data.is_dir():
        raise ConfigError(f"--data {cfg.data}: no such directory")
    _check_resume(cfg)
    t0 = time.perf_counter()
    records = run_stages(
        cfg.out, plan_experiment(cfg), nproc_per_node=cfg.nproc_per_node, echo=not cfg.quiet
    )
    ran = [r for r in records if not r["skipped"]]
    log.info(
        "gen4 experiment done in %.1f s (%d stage(s) run, %d skipped): %s",
        time.perf_counter() - t0,
        len(ran),
        len(records) - len(ran),
        cfg.out / "gen3_vs_gen4.md",
    )
    return 0
