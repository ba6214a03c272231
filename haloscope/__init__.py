"""haloscope: a strong-lens finder for DESI Legacy Survey DR10 g/r/z cutouts.

The distribution maps each top-level folder of the repository to a subpackage:
``haloscope.preprocess`` (input contract, mock survey, converter), ``haloscope.shards``
(shard format and streaming reader), ``haloscope.train``, ``haloscope.infer`` and
``haloscope.evaluate``, and ``haloscope.bench`` (the benchmarks). ``haloscope.cli`` is the
single entry point.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
