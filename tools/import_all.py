"""Import every module of the installed ``haloscope`` distribution; exit 1 naming any failure.

Run in a venv that holds only the runtime lock (``make runtime-check``): a module that needs
a test-only package at import time fails here. Optional extras are imported inside the
functions that use them (lenstronomy in ``transfer-sets``, scikit-learn in the simulator's
difficulty check), so they do not count.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

# the subpackages mapped from top-level folders (pyproject's package-dir); the packages
# nested in them are found by walking
PACKAGES = ("haloscope", "haloscope.preprocess", "haloscope.shards", "haloscope.train",
            "haloscope.infer", "haloscope.evaluate", "haloscope.bench")  # fmt: skip


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        for info in pkgutil.walk_packages(path, prefix=f"{package}."):
            if not info.name.endswith(".__main__"):  # __main__ runs a CLI when imported
                names.append(info.name)
    return names


def main() -> int:
    names = _modules()
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - report every failing module, not just the first
            failed.append(name)
            traceback.print_exc(limit=1)
    print(f"imported {len(names) - len(failed)} of {len(names)} haloscope modules")
    for name in failed:
        print(f"import failed: {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
