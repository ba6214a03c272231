"""``python -m haloscope`` is the same as the ``haloscope`` console script."""

from haloscope.cli import main

raise SystemExit(main())
