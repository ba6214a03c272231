"""One plain-``srun`` rank of ``test_dist_launch.py``: no torchrun, only Slurm's variables.

Forms the process group through ``init_distributed``, all-reduces, and writes
``{rank, world_size, local_rank, launcher, mean, gathered}`` to ``argv[1]/rank<R>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from haloscope.train.dist import (
    all_gather_1d,
    all_reduce_mean,
    detect_launch,
    init_distributed,
    shutdown,
)


def main(out: str) -> None:
    env = init_distributed("cpu")
    try:
        mean = all_reduce_mean({"x": float(env.rank + 1)}, env)["x"]
        gathered = all_gather_1d(torch.arange(env.rank + 1, dtype=torch.float32), env)
        doc = {
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "launcher": detect_launch().launcher,
            "mean": mean,
            "gathered": gathered.tolist(),
        }
        (Path(out) / f"rank{env.rank}.json").write_text(json.dumps(doc))
    finally:
        shutdown(env)


if __name__ == "__main__":
    main(sys.argv[1])
