"""Experiments that drive the whole pipeline through the ``haloscope`` verbs.

``haloscope gen4`` (``gen4_cli.py``; settings in ``config.py``, plan in ``gen4.py``, run by
the resumable stage runner ``stages.py``): the seed's Gen3 -> mine -> Gen4 experiment. An
experiment may import every stage; no stage imports an experiment.
"""
