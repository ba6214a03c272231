"""Settings and fixed constants of the mock survey simulator (``haloscope simulate``)."""

from __future__ import annotations

from dataclasses import dataclass

from haloscope.errors import ConfigError
from haloscope.shards.schema import CONTROL_KINDS as SHARD_CONTROL_KINDS

__all__ = [
    "SimConfig",
    "CONTROL_KINDS",
    "CONFUSER_KINDS",
    "BANDS",
    "SPLITS",
    "CHUNK_ROWS",
    "REGIONS_PER_CHUNK",
    "NUM_SELECTION_SETS",
    "EXPERIMENT_ID",
    "PIPELINE_VERSION",
]

BANDS = ("g", "r", "z")
SPLITS = ("train", "val", "test")
# The shards' control-kind vocabulary less "" (lenses), "ordinary" and "other" (unknown names):
# one list, so a kind the mock draws is always one the shards can store.
CONFUSER_KINDS = tuple(k for k in SHARD_CONTROL_KINDS if k not in ("", "ordinary", "other"))
CONTROL_KINDS = ("ordinary", *CONFUSER_KINDS)

# Rows per work unit. Fixed (never derived from --workers) so output is a pure function of the
# seed; each chunk is its own set of sky regions and writes one part file per split.
CHUNK_ROWS = 4096
# Sky regions per chunk; each region is 4x4 bricks and lies wholly in one split.
REGIONS_PER_CHUNK = 20
NUM_SELECTION_SETS = 12
EXPERIMENT_ID = "mock_stamp64_bandsgrz_sie"
PIPELINE_VERSION = "haloscope-mock-2"  # 2: lens population from physics (issue 16)
_CODECS = ("zstd", "gzip", "snappy", "none")


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Everything that defines one mock survey; the output is a pure function of it.

    Attributes mirror the CLI flags of ``haloscope simulate``.
    """

    out: str
    """Output root; gets ``region_split=<split>/part-<chunk>.parquet``."""
    rows: int
    """Total number of table rows (about 9 rows per unique galaxy)."""
    seed: int = 0
    """Master seed; chunk ``i`` uses ``np.random.default_rng([seed, i])``."""
    workers: int = 1
    """Processes; has no effect on the bytes written."""
    compression: str = "zstd"
    """Parquet codec: zstd (fast), gzip (as the real DR10 tables), snappy or none."""
    control_frac: float = 0.5
    """Fraction of galaxies that are controls (per galaxy, so controls and lenses are unpaired)."""
    confuser_frac: float = 0.25
    """Fraction of controls drawn as lens-like confusers (ring, spiral, edge_on, merger, ...)."""
    split_fracs: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Fractions of sky regions in train/val/test."""
    fail_frac: float = 0.005
    """Fraction of galaxies whose rows are ``cutout_ok=0`` with an r-only zero stamp."""
    nan_frac: float = 0.0005
    """Fraction of galaxies whose stamps carry a NaN patch while ``cutout_ok=1``."""
    r_only_frac: float = 0.002
    """Fraction of galaxies stored with ``bandset='r'`` (only ``image_r`` in the npz)."""
    chunk_rows: int = CHUNK_ROWS
    """Rows per work unit (changing it changes the output)."""
    selection_frac: float = 0.32
    """Chance that each of the 11 further selection sets also picks a galaxy (0: 2 rows each)."""
    quantize: float = 0.0
    """Round pixels to a power-of-two step <= sky sigma / quantize (0: exact float32)."""
    survey: bool = False
    """Write an unlabelled survey to search instead: one row per galaxy in <out>/cutouts/, no
    truth columns; the truth goes to <out>/truth.parquet (see --survey-lens-frac)."""
    survey_lens_frac: float = 0.02
    """With --survey: fraction of galaxies with a planted lens, in place of --control-frac
    (about 1e-3 among real LRGs; a few percent gives recall in the top N enough lenses at
    demo sizes). --split-fracs and --selection-frac do not apply to a survey."""

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ConfigError(f"--rows must be >= 1, got {self.rows}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.compression not in _CODECS:
            raise ConfigError(
                f"--compression must be one of {', '.join(_CODECS)}, got {self.compression!r}"
            )
        if self.quantize < 0:
            raise ConfigError(f"--quantize must be >= 0, got {self.quantize}")
        names = (
            "control_frac",
            "confuser_frac",
            "fail_frac",
            "nan_frac",
            "r_only_frac",
            "survey_lens_frac",
        )
        for name in (*names, "selection_frac"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be in [0, 1], got {value}")
        if self.fail_frac + self.nan_frac + self.r_only_frac > 0.5:
            raise ConfigError("--fail-frac + --nan-frac + --r-only-frac must be <= 0.5")
        fracs = self.split_fracs
        if len(fracs) != 3 or min(fracs) < 0 or abs(sum(fracs) - 1.0) > 1e-6:
            raise ConfigError(
                f"--split-fracs must be three non-negative numbers summing to 1, got {fracs}"
            )
        if self.chunk_rows < 64:
            raise ConfigError(f"chunk_rows must be >= 64, got {self.chunk_rows}")

    @property
    def num_chunks(self) -> int:
        """Number of work units (the last may be short)."""
        return -(-self.rows // self.chunk_rows)

    def rows_in_chunk(self, chunk_index: int) -> int:
        """Rows written by chunk ``chunk_index``."""
        return min(self.chunk_rows, self.rows - chunk_index * self.chunk_rows)
