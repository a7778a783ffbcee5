"""TOML configuration files read into dataclasses, with errors that name the file, the key and the fix.

A config is a dataclass whose fields are sections (themselves dataclasses of typed keys).
:func:`load_sections` reads a file, applies ``section.key=VALUE`` overrides and builds the
dataclass; unknown sections or keys (with a "did you mean" hint) and wrong types raise
:class:`~nestrank.errors.ConfigError`. Supported key types: ``str``, ``int``, ``float``, ``bool``,
``list[...]`` of those, and ``X | None``.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from nestrank.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["apply_overrides", "build_section", "build_sections", "check_type", "load_sections", "parse_overrides", "read_toml",
           "suggest"]

T = TypeVar("T")


def read_toml(path: str | Path, overrides: dict[str, Any] | None = None, what: str = "config") -> dict[str, Any]:
    """The nested data of a TOML file, with ``{"section.key": value}`` overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} not found (fix: check the path)")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))  # no newline translation: a bare CR is not TOML
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return apply_overrides(data, overrides, str(path))


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None, where: str = "config") -> dict[str, Any]:
    """A copy of ``{section: {key: value}}`` data with ``{"section.key": value}`` overrides replacing its values."""
    data = {section: dict(table) if isinstance(table, dict) else table for section, table in data.items()}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override {dotted!r} must look like section.key (e.g. train.max_steps)")
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"override {dotted!r}: {section} is not a table in {where}")
        table[key] = value
    return data


def build_sections(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build the config dataclass ``cls`` from ``{section: {key: value}}``; missing sections keep their defaults."""
    hints = typing.get_type_hints(cls)
    built: dict[str, Any] = {}
    for section, values in data.items():
        if section not in hints:
            raise ConfigError(f"{where}: unknown section [{section}]{suggest(section, hints)}; "
                              f"sections are {', '.join(f'[{s}]' for s in hints)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: {section} must be a table ([{section}] followed by key = value lines)")
        built[section] = build_section(hints[section], values, section, where)
    return cls(**built)


def load_sections(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Read a TOML file into the config dataclass ``cls`` (see :func:`build_sections`)."""
    return build_sections(cls, read_toml(path, overrides), str(path))


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``section.key=VALUE`` strings to a dict; VALUE is read as TOML (``5``, ``true``, ``"x"``), else kept as text."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write section.key=VALUE, e.g. train.max_steps=10")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def build_section(cls: type, values: dict[str, Any], section: str, where: str) -> Any:
    """The dataclass ``cls`` from one TOML section's ``values``: unknown keys (with a hint) and wrong types raise."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {section}.{key}{suggest(key, known)}; "
                              f"[{section}] takes {', '.join(known)}")
        kwargs[key] = check_type(value, hints[key], f"{section}.{key}", where)
    return cls(**kwargs)


def check_type(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` checked against the type ``hint`` (ints are accepted for floats); raises ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return check_type(value, inner, key, where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [check_type(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: {key} must be a {hint.__name__}, got {value!r}")
    return value


def suggest(name: str, known: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to ``name``, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
