"""The mock survey is a pure function of the seed, whatever the number of workers."""

from __future__ import annotations

import hashlib

from haloscope.preprocess.sim.config import SimConfig
from haloscope.preprocess.sim.run import simulate


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("region_split=*/*.parquet"))
    }


def test_same_seed_same_bytes_for_any_worker_count(tmp_path):
    runs = {}
    for name, workers, seed in (("a", 1, 11), ("b", 2, 11), ("c", 1, 12)):
        cfg = SimConfig(
            out=str(tmp_path / name), rows=700, seed=seed, workers=workers, chunk_rows=256
        )
        simulate(cfg, progress=False)
        runs[name] = _digest(tmp_path / name)
    assert len(runs["a"]) >= 3
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
