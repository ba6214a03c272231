"""The parquet -> shards converter (``haloscope shards``).

``core.py`` holds the settings (``ConvertConfig``) and the lens-specific pass 1 over one
input file; ``run.py`` the orchestration (work units, tasks, workers, resume, pass 2);
``manifest.py`` the manifest step and the up-to-date check; ``cli.py`` the verb. The shared
parts of the input contract (schema, gates, decode, normalize, read_parquet, hardneg) stay
in ``haloscope.preprocess``; the shard format is ``haloscope.shards``.
"""
