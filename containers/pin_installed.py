"""Print ``name==version`` for each named distribution installed in this Python.

Used as a pip constraint when haloscope is installed into an existing CUDA PyTorch (an NGC
container, a cluster's PyTorch module), so that resolving pyproject.toml's ranges can never
replace the provided torch with a wheel from the package index:

    python containers/pin_installed.py torch torchvision triton numpy > keep.txt
    pip install -c keep.txt -e .

Distributions that are not installed are skipped. Standard library only.
"""

from __future__ import annotations

import sys
from importlib import metadata


def pins(names: list[str]) -> list[str]:
    """``name==version`` of each installed distribution of ``names``, in the given order."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    print("\n".join(pins(sys.argv[1:])))
