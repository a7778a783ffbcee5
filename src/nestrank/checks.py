"""Argument checks for the public Python API: a wrong type or value fails at the entry point, naming the parameter.

Used by the entry points of :mod:`nestrank.data`, :mod:`nestrank.retrieve`, :mod:`nestrank.rerank`,
:mod:`nestrank.pipeline`, :mod:`nestrank.evaluate` and :mod:`nestrank.models`, so that
``BM25Index.search("a string")`` or ``rerank_run(run, corpus, queries, ...)`` raise an
:class:`~nestrank.errors.ArgumentTypeError` (a ``TypeError``) or a
:class:`~nestrank.errors.ConfigError` (a ``ValueError``) that names the parameter, instead of an
``AttributeError`` from deep inside. Duck-typed on purpose: this module imports nothing of nestrank
but its errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any

from nestrank.errors import ArgumentTypeError, ConfigError


def type_name(value: object) -> str:
    """``str``, ``list``, ``Corpus``...: the type of ``value`` as a message shows it."""
    return "None" if value is None else type(value).__name__


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def check_text_mapping(value: Any, name: str, what: str = "{id: text}", hint: str = "") -> Mapping[str, str]:
    """``value`` when it is a mapping of string ids to string texts; else :class:`ArgumentTypeError`.

    A single string or a list of texts (the usual slips) get a message showing the fix.
    """
    if isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a mapping {what}, got a str (fix: {{'q1': {value[:30]!r}}})"
                                + _hint(hint))
    if not isinstance(value, Mapping):
        fix = " (fix: give ids, e.g. {str(i): text for i, text in enumerate(texts)})" \
            if isinstance(value, Sequence) else ""
        raise ArgumentTypeError(f"{name} must be a mapping {what}, got {type_name(value)}{fix}{_hint(hint)}")
    for key, text in value.items():
        if not isinstance(key, str):
            raise ArgumentTypeError(f"{name}: id {key!r} is a {type_name(key)}, not a str (ids are strings)")
        if not isinstance(text, str):
            raise ArgumentTypeError(f"{name}[{key!r}] is a {type_name(text)}, not a str" + _hint(hint))
    return value


def check_texts(value: Any, name: str, what: str = "texts") -> list[str]:
    """``value`` as a list when it is a sequence (or iterable) of strings but not one string; else :class:`ArgumentTypeError`."""
    if isinstance(value, str | bytes):
        raise ArgumentTypeError(f"{name} must be a list of {what}, got one {type_name(value)} (fix: [{value[:30]!r}])")
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name} must be a list of {what}, got {type_name(value)}")
    items = list(value)
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise ArgumentTypeError(f"{name}[{position}] is a {type_name(item)}, not a str")
    return items


def check_int(value: Any, name: str, minimum: int = 1, what: str = "") -> int:
    """``value`` when it is an integer of at least ``minimum`` (not a bool); else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r} ({type_name(value)}){_hint(what)}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}{_hint(what)}")
    return value


def check_k(k: Any, name: str = "k") -> int:
    """``k`` (results per query) when it is an integer >= 1."""
    return check_int(k, name, 1, "results per query")


def check_corpus_arg(value: Any, name: str = "corpus", *, iterable: bool = False, hint: str = "") -> Any:
    """``value`` when it is a corpus (``get_many``, ``ids`` and ``in``), or with ``iterable`` any iterable of documents
    other than a string or mapping; else :class:`ArgumentTypeError`."""
    if iterable and not isinstance(value, str | bytes | Mapping) and isinstance(value, Iterable):
        return value
    if not all(hasattr(value, attribute) for attribute in ("get_many", "ids", "__contains__")):
        raise ArgumentTypeError(f"{name} must be a nestrank.data.Corpus, got {type_name(value)} (fix: "
                                f"Corpus.open(path) or Corpus.from_documents(documents)){_hint(hint)}")
    return value


def check_mapping(value: Any, name: str, what: str, hint: str = "") -> Mapping:
    """``value`` when it is a mapping; else :class:`ArgumentTypeError` saying it should be ``what``."""
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(f"{name} must be {what}, got {type_name(value)}{_hint(hint)}")
    return value


def check_path(value: Any, name: str) -> Any:
    """``value`` when it is a path (``str`` or :class:`os.PathLike`); else :class:`ArgumentTypeError`."""
    if not isinstance(value, str | PathLike):
        raise ArgumentTypeError(f"{name} must be a path (str or pathlib.Path), got {type_name(value)}")
    return value


def check_iterable(value: Any, name: str, what: str) -> Iterable:
    """``value`` when it is an iterable of items (not a string or mapping); else :class:`ArgumentTypeError`."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name} must be an iterable of {what}, got {type_name(value)}")
    return value
