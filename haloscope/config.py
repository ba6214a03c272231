"""Typed dataclass configs: defaults < presets < TOML file < CLI flags < dotted overrides.

A config is a frozen dataclass; a field may itself be a dataclass (a section). Every field has
a one-line docstring under it, which is also its ``--help`` text (``field_docs``); CLI details
that a field name cannot say (another flag name, an alias, a list flag) go in ``option()``.
``load_config`` merges the sources in precedence order. Unknown keys and values of the wrong
type are ``ConfigError``s naming the key; ``ValueError``s raised by ``__post_init__`` become
``ConfigError``s too. ``to_toml`` writes a resolved config that ``load_config`` reads back.

Example::

    cfg = load_config(TrainConfig, toml_path="runs/x.toml", overrides=["--optim.lr=3e-4"])
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from haloscope.errors import ConfigError

__all__ = [
    "load_config",
    "config_to_dict",
    "parse_override",
    "merge_dicts",
    "nest",
    "option",
    "cli_meta",
    "coerce",
    "field_docs",
    "sections",
    "ordered_fields",
    "to_toml",
    "narrow",
    "per_rank",
]

T = TypeVar("T")
_NONE_WORDS = {"none", "null", ""}
_TRUE_WORDS, _FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
_META = "haloscope.cli"


def per_rank(total: int, world_size: int, flag: str = "--batch-size") -> int:
    """A global batch's share per rank (train, infer, search: one rule, one message).

    Raises:
        ConfigError: ``total`` does not divide evenly over ``world_size`` ranks.
    """
    if total % world_size:
        raise ConfigError(
            f"{flag} {total} (the global batch) does not divide evenly over {world_size} ranks"
        )
    return total // world_size


def option(
    default: Any = dataclasses.MISSING,
    *,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    switches: Mapping[str, Any] | None = None,
    nargs: str | None = None,
    const: Any = None,
    parse: Callable[[str], Any] | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with CLI details; the help text stays the docstring under the field.

    Args:
        default: the field's default (none: the setting is required).
        flag: the flag's name when it is not ``--field-name``.
        aliases: other spellings of the flag, kept working (the seed's names).
        switches: flags without a value that set the field to a given value,
            e.g. ``{"--use-bf16": "bf16"}``.
        nargs: ``"+"`` or ``"*"`` for a list given as separate words; ``"?"`` for a value
            that may be left out (the flag alone then gives ``const``).
        const: the value of the flag given without its value (``nargs="?"``).
        parse: turns the flag's text into a value (default: by the field's type).
        choices: allowed values of a ``str`` field (checked from every source).
        metavar: the value's name in ``--help`` (default: the field name in capitals).
        cli: False for a field that the verb sets itself (no flag).
    """
    meta = {
        "flag": flag,
        "aliases": tuple(aliases),
        "switches": dict(switches or {}),
        "nargs": nargs,
        "const": const,
        "parse": parse,
        "choices": None if choices is None else tuple(choices),
        "metavar": metavar,
        "cli": cli,
    }
    return dataclasses.field(default=default, metadata={_META: meta})


def cli_meta(f: dataclasses.Field) -> dict[str, Any]:
    """The ``option()`` details of a field (empty for a plain field)."""
    return dict(f.metadata.get(_META, {}))


def parse_override(text: str) -> tuple[str, str]:
    """Split ``--optim.lr=3e-4`` (or ``optim.lr=3e-4``) into ``("optim.lr", "3e-4")``.

    Raises:
        ConfigError: if the text is not ``key=value`` with a dotted key.
    """
    body = text[2:] if text.startswith("--") else text
    key, sep, value = body.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"override {text!r} must look like --section.field=value")
    return key.replace("-", "_"), value


def merge_dicts(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base`` (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _scalar(value: Any, tp: Any) -> Any:
    """``value`` as a ``tp`` (bool, int, float, str, Path), or raise ``ValueError``."""
    if tp is bool:
        if isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.lower() in _TRUE_WORDS
        if isinstance(value, bool):
            return value
    elif tp in (int, float):
        if isinstance(value, str):
            return tp(value)  # ValueError on bad text
        allowed = int if tp is int else int | float
        if isinstance(value, allowed) and not isinstance(value, bool):
            return tp(value)
    elif tp is str and isinstance(value, str):
        return value
    elif tp is Path and isinstance(value, str | Path):
        return Path(value)
    raise ValueError(value)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against a field type; strings (from the CLI) are parsed.

    Raises:
        ConfigError: naming ``key`` (a config key or a flag) and the bad value.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS)
        ):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices and {"yes", "no"} <= set(choices):
            # a yes/no Literal that was a bool once: true/false (older configs) are its words
            if isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
                value = value.lower() in _TRUE_WORDS
            if isinstance(value, bool):
                value = "yes" if value else "no"
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(coerce(v, item_tp, key) for v in value)
    if tp not in (bool, int, float, str, Path):
        raise ConfigError(f"{key}: unsupported field type {tp!r}")
    try:
        return _scalar(value, tp)
    except (ValueError, OverflowError):
        raise ConfigError(f"{key} must be of type {tp.__name__}, got {value!r}") from None


def _unknown(key: str, known: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
    return ConfigError(f"unknown config key {key}{where} ({hint})")


def _build(cls: type[T], values: Mapping[str, Any], prefix: str, flags: Mapping[str, str]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise _unknown(prefix + unknown[0], [prefix + n for n in fields], "")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        tp, key = hints[name], prefix + name
        if name not in values:
            if _is_required(f):
                given = f"{flags[key]} or " if key in flags else ""
                raise ConfigError(f"{given}{key} (in --config) is required")
            continue
        value = values[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} is a section; give {key}.<field>=value")
            kwargs[name] = _build(tp, value, key + ".", flags)  # type: ignore[arg-type]
            continue
        kwargs[name] = coerce(value, tp, key)
        choices = cli_meta(f).get("choices")
        if choices is not None and kwargs[name] not in choices:
            shown = flags.get(key, key)
            raise ConfigError(f"{shown} must be one of {', '.join(choices)}, got {value!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def nest(key: str, value: Any) -> dict[str, Any]:
    """``nest("run.epochs", 3)`` is ``{"run": {"epochs": 3}}``."""
    node: dict[str, Any] = {}
    cursor = node
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return node


def load_config(
    cls: type[T],
    *,
    toml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    layers: Sequence[Mapping[str, Any]] = (),
    cli: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> T:
    """Build a config: defaults < ``layers`` (in order) < TOML file < ``cli`` < ``overrides``.

    Args:
        cls: the top-level config dataclass (sections are dataclass-typed fields).
        toml_path: optional TOML file (``[section]`` tables for sections).
        overrides: ``--section.field=value`` strings; values are parsed by field type
            (``none`` for optional fields, comma lists for tuples, true/false for bools).
        layers: nested dicts applied before the TOML file (e.g. a named preset).
        cli: nested dict of the values given as flags.
        flags: config key -> flag name, to name the flag in a "required" error.

    Returns:
        The frozen, validated config.

    Raises:
        ConfigError: unreadable TOML, unknown key, wrong type, missing required value, or a
            failed cross-field check.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_dicts(merged, layer)
    if toml_path is not None:
        path = Path(toml_path)
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {path}: cannot read TOML: {exc}") from None
        _check_keys(cls, table, "", f" in --config {path}")
        merged = merge_dicts(merged, table)
    merged = merge_dicts(merged, cli or {})
    for text in overrides:
        merged = merge_dicts(merged, nest(*parse_override(text)))
    return _build(cls, merged, "", flags or {})


def _check_keys(cls: Any, table: Mapping[str, Any], prefix: str, where: str) -> None:
    """Unknown keys of a TOML table, named with the file they came from."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in table.items():
        if key not in names:
            raise _unknown(prefix + key, [prefix + n for n in names], where)
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            _check_keys(hints[key], value, f"{prefix}{key}.", where)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/TOML-ready nested dict of a config (tuples become lists, paths strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(dataclasses.asdict(cfg))


def narrow(cfg: Any, cls: type[T]) -> T:
    """The ``cls`` part of ``cfg``, an instance of a subclass of ``cls`` with extra fields."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if f.init})  # type: ignore[arg-type]


@functools.cache
def _own_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it (inherited fields too), whitespace collapsed."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_docs(klass))
    return docs


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """The init fields of ``cls``, required ones (no default) first, else in declaration
    order (``--help`` and ``--print-config`` lead with what must be given)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = [f for f in fields if _is_required(f)]
    return required + [f for f in fields if not _is_required(f)]


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def sections(cls: type) -> dict[str, type]:
    """Field name -> section dataclass, for the dataclass-typed fields of ``cls``."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _toml_table(cfg: Any, skip: Sequence[str], prefix: str) -> tuple[list[str], list[str]]:
    """Lines of this table's keys and of its sub-tables; ``None`` is written as ``"none"``
    (or left out, as a comment, where the default is None too)."""
    docs, subs = field_docs(type(cfg)), sections(type(cfg))
    own: list[str] = []
    nested: list[str] = []
    for f in ordered_fields(type(cfg)):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if key in skip:
            continue
        if f.name in subs:
            keys, tables = _toml_table(value, skip, key + ".")
            nested += ["", f"[{key}]", *keys, *tables]
            continue
        if docs.get(f.name):
            own.append(f"# {docs[f.name]}")
        if value is None:
            own.append(f"# {f.name} = none" if f.default is None else f'{f.name} = "none"')
        else:
            own.append(f"{f.name} = {_toml_value(value)}")
    return own, nested


def to_toml(cfg: Any, *, skip: Sequence[str] = ()) -> str:
    """The resolved config as TOML (field docstrings as comments); ``load_config`` reads it
    back to an equal config. ``skip``: dotted keys left out (values the verb sets itself)."""
    own, nested = _toml_table(cfg, skip, "")
    return "\n".join(own + nested).lstrip("\n") + "\n"
