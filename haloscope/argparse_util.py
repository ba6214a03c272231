"""argparse helpers shared by every verb: both flag spellings and defaults in --help."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["VerbParser", "parse_csv"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default and keeps the description's line breaks."""


class VerbParser(argparse.ArgumentParser):
    """An ArgumentParser whose long flags accept both ``--batch-size`` and ``--batch_size``.

    Every ``add_argument('--some-flag', ...)`` also registers ``--some_flag`` (the seed's
    spelling). Errors exit with status 2 and one line, as argparse does.
    """

    def __init__(self, verb: str, description: str, **kwargs: Any) -> None:
        super().__init__(
            prog=f"haloscope {verb}",
            description=description,
            formatter_class=_Formatter,
            allow_abbrev=False,
            **kwargs,
        )

    def add_argument(self, *names: str, **kwargs: Any):  # type: ignore[override]
        return super().add_argument(*names, *_underscore_aliases(names), **kwargs)

    def add_argument_group(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        group = super().add_argument_group(*args, **kwargs)
        original = group.add_argument

        def add(*names: str, **kw: Any):
            return original(*names, *_underscore_aliases(names), **kw)

        group.add_argument = add  # type: ignore[method-assign]
        return group


def _underscore_aliases(names: tuple[str, ...]) -> list[str]:
    """``--some_flag`` for every ``--some-flag`` in ``names`` that lacks that spelling."""
    aliases = ["--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:]]
    return [a for a in aliases if a not in names]


def parse_csv(text: str) -> list[str]:
    """Split ``"a,b, c"`` into ``["a", "b", "c"]``; an empty string gives ``[]``."""
    return [part.strip() for part in text.split(",") if part.strip()]
