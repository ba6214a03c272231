"""Every verb's command line, derived from its config dataclass (``ConfigCLI``).

Each field of the config (sections flattened) is one flag, named after the field unless
``option(flag=...)`` says otherwise, with the field's docstring as its help. Flags that
mean the same thing in every verb have one name there and keep the other spelling as an
alias (``SYNONYMS``); every flag also accepts underscores (``--batch_size``, the seed's
spelling). Every verb takes ``--config FILE.toml`` and ``--print-config``. Precedence:
dataclass defaults < ``--preset`` < ``--config`` < flags < ``--section.field=value``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, NoReturn, TypeVar

from haloscope.config import (
    cli_meta,
    coerce,
    field_docs,
    load_config,
    merge_dicts,
    nest,
    ordered_fields,
    sections,
    to_toml,
)
from haloscope.errors import ConfigError

__all__ = ["VerbParser", "ConfigCLI", "Flag", "config_flags", "parse_csv", "SYNONYMS"]

T = TypeVar("T")
# one name per meaning in every verb: alias -> the name (the alias keeps working)
SYNONYMS: dict[str, str] = {"--out-dir": "--out", "--workers": "--num-workers"}
META_FLAGS = ("--help", "--config", "--print-config", "--preset")
_DEST = "cfg:"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a plain flag's default and keeps the description's line breaks; option help is
    wrapped. (Config flags default to SUPPRESS and name their default themselves.)"""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


class VerbParser(argparse.ArgumentParser):
    """An ArgumentParser whose long flags also accept underscores (``--batch_size``).

    The underscore spellings are hidden from ``--help``. Errors are one line naming the
    verb, with exit status 2.
    """

    def __init__(self, verb: str, description: str, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", "Every flag also accepts underscores: --batch_size.")
        super().__init__(
            prog=f"haloscope {verb}",
            description=description,
            formatter_class=_Formatter,
            allow_abbrev=False,
            **kwargs,
        )
        self.verb = verb

    def add_argument(self, *names: str, **kwargs: Any):  # type: ignore[override]
        action = super().add_argument(*names, **kwargs)
        self._add_hidden(names, kwargs, action.dest)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        group = super().add_argument_group(*args, **kwargs)
        original = group.add_argument

        def add(*names: str, **kw: Any):
            action = original(*names, **kw)
            self._add_hidden(names, kw, action.dest)
            return action

        group.add_argument = add  # type: ignore[method-assign]
        return group

    def _add_hidden(self, names: Sequence[str], kwargs: dict[str, Any], dest: str) -> None:
        """The underscore spellings of ``names``, as a second action without help."""
        hidden = _underscore_aliases(names)
        if not hidden or not names[0].startswith("-"):
            return
        extra = {k: v for k, v in kwargs.items() if k not in ("help", "metavar", "dest")}
        if "values" in extra:
            extra["values"] = {_underscored(k): v for k, v in extra["values"].items()}
        if extra.get("required"):
            extra["required"] = False
        super().add_argument(*hidden, help=argparse.SUPPRESS, dest=dest, **extra)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _underscored(flag: str) -> str:
    return "--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag


def _underscore_aliases(names: Sequence[str]) -> list[str]:
    """``--some_flag`` for every ``--some-flag`` in ``names`` that lacks that spelling."""
    aliases = [_underscored(n) for n in names if n.startswith("--") and "-" in n[2:]]
    return [a for a in aliases if a not in names]


class _SetValue(argparse.Action):
    """A flag without a value that stores a fixed value per spelling (``--no-x``: False)."""

    def __init__(
        self, option_strings: list[str], dest: str, values: Mapping[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.values = dict(values)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.values[option_string])


@dataclasses.dataclass(frozen=True)
class Flag:
    """One config field as a command-line flag."""

    key: str
    """Dotted config key (``run.epochs``; ``epochs`` in a flat config)."""
    name: str
    """The flag (``--epochs``)."""
    aliases: tuple[str, ...]
    """Other spellings that take a value."""
    switches: dict[str, Any]
    """Flags without a value -> the value they set (``--no-augment``: False)."""
    type: Any
    """The field's type."""
    doc: str
    """The field's docstring."""
    default: Any
    """The field's default, ``dataclasses.MISSING`` when required."""
    meta: dict[str, Any]
    """The field's ``option()`` details."""

    @property
    def spellings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.name, *self.aliases, *self.switches)))


def _is_bool(tp: Any) -> bool:
    return tp is bool or (
        typing.get_origin(tp) in (typing.Union, type(int | None))
        and set(typing.get_args(tp)) == {bool, type(None)}
    )


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def config_flags(cls: type) -> list[Flag]:
    """One ``Flag`` per field of ``cls`` (section fields flattened), required ones first;
    none for a field marked ``option(cli=False)`` (the verb sets it itself).

    Raises:
        ValueError: two fields claim the same flag (a setting declared twice).
    """
    flags: list[Flag] = []
    for key, f, tp, doc in _leaves(cls, ""):
        meta = cli_meta(f)
        if meta.get("cli") is False:
            continue
        default = "--" + f.name.replace("_", "-")
        name = meta.get("flag") or SYNONYMS.get(default, default)
        more = [a for a, n in SYNONYMS.items() if n == name] if not meta.get("flag") else []
        names = [*meta.get("aliases", ()), *more]
        switches = dict(meta.get("switches", {}))
        if _is_bool(tp):
            switches = {name: True, "--no-" + name[2:]: False, **switches}
        flags.append(
            Flag(
                key,
                name,
                tuple(dict.fromkeys(n for n in names if n != name)),
                switches,
                tp,
                doc,
                _default(f),
                meta,
            )
        )
    _drop_claimed_synonyms(flags)
    return flags


def _leaves(cls: type, prefix: str):
    hints, docs, subs = typing.get_type_hints(cls), field_docs(cls), sections(cls)
    for f in ordered_fields(cls):
        if f.name in subs:
            yield from _leaves(subs[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, hints[f.name], docs.get(f.name, "")


def _drop_claimed_synonyms(flags: list[Flag]) -> None:
    """A ``SYNONYMS`` alias that another field names explicitly stays that field's; a
    flag claimed twice otherwise is an error."""
    own = {s: fl.key for fl in flags for s in (fl.name, *fl.meta.get("aliases", ()))}
    for i, fl in enumerate(flags):
        kept = tuple(a for a in fl.aliases if own.get(a, fl.key) == fl.key)
        flags[i] = dataclasses.replace(fl, aliases=kept)
    seen: dict[str, str] = {}
    for fl in flags:
        for spelling in fl.spellings:
            if spelling in seen or spelling in META_FLAGS:
                raise ValueError(
                    f"flag {spelling} is claimed by {seen.get(spelling, 'the CLI')} and {fl.key}"
                )
            seen[spelling] = fl.key


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if value else "none"
    return str(value) if value != "" else "''"


def _choices(fl: Flag) -> tuple[Any, ...] | None:
    tp = fl.type
    if typing.get_origin(tp) in (typing.Union, type(int | None)):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return fl.meta.get("choices")


def _converter(fl: Flag) -> Callable[[str], Any]:
    item_tp = fl.type
    if fl.meta.get("nargs") in ("+", "*"):
        item_tp = typing.get_args(fl.type)[0]  # tuple[X, ...]: one word per item

    def convert(text: str) -> Any:
        try:
            value = fl.meta["parse"](text) if fl.meta.get("parse") else text
            return coerce(value, item_tp, fl.name)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


class ConfigCLI(Generic[T]):
    """The command line of one verb, derived from its config dataclass ``cls``.

    Args:
        verb: the verb's name (``train``).
        cls: the config dataclass; its fields are the flags.
        description: ``--help`` text above the flags.
        presets: named layers under ``--config`` (``--preset NAME``).
        preset_switches: flags that pick a preset (``{"--tiny": "tiny"}``).

    Fields without a flag (``option(cli=False)``) are left out of ``--print-config``.
    """

    def __init__(
        self,
        verb: str,
        cls: type[T],
        description: str,
        *,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
        preset_switches: Mapping[str, str] | None = None,
    ) -> None:
        self.verb, self.cls, self.description = verb, cls, description
        self.presets, self.preset_switches = dict(presets or {}), dict(preset_switches or {})
        self.flags = config_flags(cls)
        flagged = {fl.key for fl in self.flags}
        self.skip = tuple(key for key, *_ in _leaves(cls, "") if key not in flagged)
        self.nested = bool(sections(cls))

    def build_parser(self) -> VerbParser:
        """The argparse parser: meta flags, then one flag per field (grouped by section)."""
        p = VerbParser(
            self.verb,
            self.description,
            epilog=self._epilog(),
            usage="%(prog)s [--config FILE.toml] [--print-config] [FLAG ...]",
        )
        p.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            metavar="FILE.toml",
            help=(
                "TOML file of settings (keys as --print-config writes them); "
                "flags given on the command line win"
            ),
        )
        p.add_argument(
            "--print-config",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print the resolved config as TOML and exit",
        )
        if self.presets:
            p.add_argument(
                "--preset",
                choices=sorted(self.presets),
                default=argparse.SUPPRESS,
                help="named settings under --config: "
                + "; ".join(f"{n}: {_show_layer(v)}" for n, v in self.presets.items()),
            )
            for flag, name in self.preset_switches.items():
                p.add_argument(
                    flag,
                    action="store_const",
                    const=name,
                    dest="preset",
                    help=f"same as --preset {name}",
                )
        groups: dict[str, Any] = {}
        for fl in self.flags:
            section = fl.key.rpartition(".")[0]
            if section not in groups:
                groups[section] = p.add_argument_group(f"[{section}]") if section else p
            self._add_flag(groups[section], fl)
        return p

    def _epilog(self) -> str:
        text = "Every flag also accepts underscores (--batch_size)."
        if self.nested:
            text += (
                " Any setting can also be given as --section.field=value (e.g. "
                f"--{self.flags[0].key}=...); precedence: defaults < --preset < --config "
                "< flags < --section.field."
            )
        return text

    def _add_flag(self, group: Any, fl: Flag) -> None:
        shown = "required" if fl.default is dataclasses.MISSING else f"default: {_show(fl.default)}"
        where = f" [{fl.key}]" if self.nested else ""
        text = f"{fl.doc.replace('``', '')}{where} ({shown})".replace("%", "%%")
        dest = _DEST + fl.key
        value_flags = [] if _is_bool(fl.type) else [fl.name, *fl.aliases]
        if value_flags:
            choices = _choices(fl)
            metavar = fl.meta.get("metavar") or (
                "{" + ",".join(map(str, choices)) + "}"
                if choices
                else fl.name[2:].replace("-", "_").upper()
            )
            nargs = fl.meta.get("nargs")
            const = {"const": fl.meta.get("const")} if nargs == "?" else {}  # the flag alone
            group.add_argument(
                *value_flags,
                dest=dest,
                type=_converter(fl),
                metavar=metavar,
                nargs=nargs,
                default=argparse.SUPPRESS,
                help=text,
                **const,
            )
        switches = dict(fl.switches)
        if _is_bool(fl.type):  # --x and --no-x share one help entry
            off = "--no-" + fl.name[2:]
            pair = {fl.name: switches.pop(fl.name), off: switches.pop(off)}
            group.add_argument(
                *pair,
                action=_SetValue,
                values=pair,
                dest=dest,
                default=argparse.SUPPRESS,
                help=text,
            )
        for flag, value in switches.items():
            group.add_argument(
                flag,
                action=_SetValue,
                values={flag: value},
                dest=dest,
                default=argparse.SUPPRESS,
                help=f"same as {fl.name} {_show(value)}",
            )

    def parse(
        self,
        argv: Sequence[str],
        *,
        layers: Sequence[Mapping[str, Any]] = (),
        fixed: Mapping[str, Any] | None = None,
    ) -> T:
        """The resolved config of a command line; ``--print-config`` prints it and exits 0.

        Args:
            argv: the words after the verb.
            layers: defaults of this run under the preset (e.g. from the environment).
            fixed: dotted key -> value set by the verb itself (the fields without a flag).

        Raises:
            ConfigError: unknown flag or config key, bad value, or a failed check.
        """
        args, rest = self.build_parser().parse_known_args(list(argv))
        cli: dict[str, Any] = {}
        for dest, value in vars(args).items():
            if dest.startswith(_DEST):
                cli = merge_dicts(cli, nest(dest[len(_DEST) :], value))
        for key, value in (fixed or {}).items():
            cli = merge_dicts(cli, nest(key, value))
        preset = getattr(args, "preset", None)
        layers = [*layers, self.presets[preset]] if preset else list(layers)
        cfg = load_config(
            self.cls,
            layers=layers,
            toml_path=getattr(args, "config", None),
            cli=cli,
            overrides=self._dotted_overrides(rest),
            flags={fl.key: fl.name for fl in self.flags},
        )
        if getattr(args, "print_config", False):
            sys.stdout.write(to_toml(cfg, skip=self.skip))
            raise SystemExit(0)
        return cfg

    def _dotted_overrides(self, rest: list[str]) -> list[str]:
        """``--section.field=value`` (or ``--section.field value``) words; others are errors."""
        out: list[str] = []
        i = 0
        while i < len(rest):
            item = rest[i]
            if not (self.nested and item.startswith("--") and "." in item.split("=", 1)[0]):
                raise ConfigError(
                    f"unrecognised argument {item!r} (see `haloscope {self.verb} --help`)"
                )
            if "=" not in item:
                if i + 1 >= len(rest):
                    raise ConfigError(f"override {item} needs a value")
                item, i = f"{item}={rest[i + 1]}", i + 1
            out.append(item)
            i += 1
        return out


def _show_layer(layer: Mapping[str, Any], prefix: str = "") -> str:
    """``a.b=1, c=x`` for a (nested) preset layer."""
    parts = []
    for key, value in layer.items():
        if isinstance(value, Mapping):
            parts.append(_show_layer(value, f"{prefix}{key}."))
        elif isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            parts.append(f"{prefix}{key}={shlex.quote(' '.join(value))}")
        else:
            parts.append(f"{prefix}{key}={_show(value)}")
    return ", ".join(p for p in parts if p) or "the defaults"


def parse_csv(text: str) -> list[str]:
    """Split ``"a,b, c"`` into ``["a", "b", "c"]``; an empty string gives ``[]``."""
    return [part.strip() for part in text.split(",") if part.strip()]
