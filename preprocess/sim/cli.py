"""``haloscope simulate``: write a mock DR10 survey in the real hive-parquet layout."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from haloscope.argparse_util import ConfigCLI
from haloscope.config import narrow
from haloscope.log import setup_logging
from haloscope.preprocess.sim.config import SimConfig

__all__ = ["CLI", "SimulateOptions", "main"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Write a mock DESI Legacy Survey DR10 cutout table: <out>/region_split={train,val,test}/part-*.parquet
with 64x64 g/r/z nanomaggy stamps (np.load-able npz in `stamp_npz`), controls (is_control=1,
a tunable share of them lens-like confusers) and SIE+shear lenses (is_control=0), about 9 rows per
galaxy, brick-sorted files, and the real tables' defects (cutout_ok=0 rows, NaN stamps, r-only rows).
The output is a pure function of --seed (and the fractions), whatever --workers is.
With --survey it writes instead what a search reads: an unlabelled survey, one row per galaxy
in <out>/cutouts/part-*.parquet (id, ra, dec, stamp_npz, cutout_ok, bandset, observing
conditions; no truth column), --survey-lens-frac of them planted lenses, and the truth in
<out>/truth.parquet (id, is_lens, kind, theta_e_arcsec, arc_snr, ...): see docs/search.md.
Physics and column dictionary: docs/mock_survey.md."""


@dataclass(frozen=True, kw_only=True)
class SimulateOptions(SimConfig):
    """A ``SimConfig`` and how to run it (the flags of ``haloscope simulate``)."""

    overwrite: bool = False
    """Replace an existing survey under --out."""
    progress: bool = True
    """Progress bar on stderr."""


CLI = ConfigCLI("simulate", SimulateOptions, _DESCRIPTION)


def main(argv: list[str]) -> int:
    """Run ``haloscope simulate``; returns the exit status.

    Raises:
        ConfigError: a flag value is inconsistent or --out already holds a survey.
    """
    cfg = CLI.parse(argv)
    setup_logging()
    # NOTE: the renderers (~1 s of scipy imports) are imported after parsing, off --help.
    if cfg.survey:
        from haloscope.preprocess.sim.survey import simulate_survey

        summary = simulate_survey(narrow(cfg, SimConfig), cfg.overwrite, cfg.progress)
        keys = ("rows", "lenses", "cutouts", "truth", "seconds", "rows_per_s")
        print(json.dumps({k: summary[k] for k in keys}))
        return 0
    from haloscope.preprocess.sim.run import simulate

    summary = simulate(narrow(cfg, SimConfig), overwrite=cfg.overwrite, progress=cfg.progress)
    print(json.dumps({k: summary[k] for k in ("rows", "rows_per_split", "seconds", "rows_per_s")}))
    return 0
