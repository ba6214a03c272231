"""The mock DR10 survey simulator (``haloscope simulate``) and the transfer sets.

``run.py`` drives it: ``population.py`` draws the galaxies of a chunk (``sources.py`` the
lensed sources), ``physics.py`` holds the analytic photometry, lensing, PSF and noise,
``render.py`` draws the stamps (with the field around them from ``field.py`` and the
look-alike controls from ``confusers.py``), ``rows.py`` and ``table.py`` build and write the
contract's rows; ``config.py`` holds the settings and ``cli.py`` the verb. ``realism.py`` and
``report.py`` check a written survey (``python -m haloscope.preprocess.sim.realism``).
``transfer.py`` (``haloscope transfer-sets``, ``transfer_cli.py``) is a second, independent
renderer built on lenstronomy.
"""
