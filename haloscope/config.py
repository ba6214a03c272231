"""Typed dataclass configs: defaults < TOML file < dotted CLI overrides.

A config is a frozen dataclass whose fields are themselves dataclasses (sections), each
field with a default. ``load_config`` merges, in precedence order, the dataclass defaults,
plain dicts (e.g. a preset), a TOML file and ``--section.field=value`` overrides. Unknown
keys and values of the wrong type are ``ConfigError``s naming the key; ``ValueError``s
raised by a section's ``__post_init__`` become ``ConfigError``s too.

Example::

    cfg = load_config(TrainConfig, toml_path="runs/x.toml", overrides=["--optim.lr=3e-4"])
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from haloscope.errors import ConfigError

__all__ = ["load_config", "config_to_dict", "parse_override", "merge_dicts"]

T = TypeVar("T")
_NONE_WORDS = {"none", "null", ""}
_TRUE_WORDS, _FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


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


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one value against a field type; strings (from the CLI) are parsed."""
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
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, str) and value.lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.lower() in _TRUE_WORDS
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {tp!r}")
    raise ConfigError(f"{key} must be of type {tp.__name__}, got {value!r}")


def _build(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(prefix + name for name in fields)
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {known})")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} is a section; give {key}.<field>=value")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config(
    cls: type[T],
    *,
    toml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    layers: Sequence[Mapping[str, Any]] = (),
) -> T:
    """Build a config: defaults < ``layers`` (in order) < TOML file < ``overrides``.

    Args:
        cls: the top-level config dataclass (sections are dataclass-typed fields).
        toml_path: optional TOML file with ``[section]`` tables.
        overrides: ``--section.field=value`` strings; values are parsed by field type
            (``none`` for optional fields, comma lists for tuples, true/false for bools).
        layers: nested dicts applied before the TOML file (e.g. a named preset).

    Returns:
        The frozen, validated config.

    Raises:
        ConfigError: unreadable TOML, unknown key, wrong type, or a failed cross-field check.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_dicts(merged, layer)
    if toml_path is not None:
        path = Path(toml_path)
        try:
            merged = merge_dicts(merged, tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {path}: cannot read TOML: {exc}") from None
    for text in overrides:
        key, value = parse_override(text)
        node: dict[str, Any] = {}
        cursor = node
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        merged = merge_dicts(merged, node)
    return _build(cls, merged, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/TOML-ready nested dict of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))
