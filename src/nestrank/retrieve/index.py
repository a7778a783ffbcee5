"""Index directories: a ``manifest.json`` that names the method, written atomically.

Every index nestrank writes is a directory holding ``manifest.json``::

    {"format_version": 1, "method": "bm25", "num_docs": 5183,
     "nestrank_version": "0.1.0", "params": {...method-specific...}}

plus whatever files the method needs. :func:`open_index` reads the manifest and hands the
directory to the class registered for its ``method`` in :data:`INDEX_TYPES`. To add a method
(dense FAISS, hybrid, ...), write a class with ``load(path, mmap=...)`` and
``search(queries, k, threads=...)`` (see :class:`SearchIndex`) and add one line to :data:`INDEX_TYPES`.

Indexes are built in a temporary sibling directory and renamed into place only when
complete (:func:`staged_index_dir`), so a crash never leaves a half-written index.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from nestrank import __version__
from nestrank.data import Run
from nestrank.errors import DataFormatError
from nestrank.files import atomic_dir, atomic_write

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

#: ``method`` in a manifest -> ``"module:Class"`` that loads it (imported only when used).
INDEX_TYPES: dict[str, str] = {
    "bm25": "nestrank.retrieve.bm25:BM25Index",
    "dense": "nestrank.retrieve.dense_index:DenseIndex",
    "hybrid": "nestrank.retrieve.dense_index:HybridIndex",
}


class SearchIndex(Protocol):
    """What :func:`open_index` returns: a loaded index that searches many queries at once."""

    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        ...

    def search(self, queries: Mapping[str, str], k: int = 100, *, threads: int = 0) -> Run:
        """Top-``k`` documents for every query (``{query_id: text}``); ``threads`` parallel
        workers where the method has them (0: its default)."""
        ...


def write_manifest(directory: str | Path, method: str, num_docs: int, params: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` into an index directory (atomically)."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "num_docs": int(num_docs),
        "nestrank_version": __version__,
        "params": dict(params),
    }
    with atomic_write(Path(directory) / MANIFEST) as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check an index directory's ``manifest.json``."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise DataFormatError(directory, None, "index directory not found", "build one with `nestrank index`")
    if not path.is_file():
        raise DataFormatError(path, None, "not a nestrank index (no manifest.json)",
                              "pass a directory written by `nestrank index`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(path, None, f"unreadable manifest ({exc})", "rebuild the index") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("method"), str):
        raise DataFormatError(path, None, "manifest has no 'method'", "rebuild the index")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataFormatError(path, None, f"index format {version!r} is not one this nestrank understands "
                              f"(<= {FORMAT_VERSION})", "upgrade nestrank, or rebuild the index")
    return manifest


def open_index(directory: str | Path, mmap: bool = True) -> SearchIndex:
    """Load any nestrank index directory, dispatching on its manifest's ``method``."""
    manifest = read_manifest(directory)
    method = manifest["method"]
    target = INDEX_TYPES.get(method)
    if target is None:
        raise DataFormatError(Path(directory) / MANIFEST, None, f"unknown index method {method!r}",
                              f"this nestrank reads: {', '.join(sorted(INDEX_TYPES))}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.load(directory, mmap=mmap)


def staged_index_dir(out: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield an empty temporary directory next to ``out``; move it to ``out`` on success.

    An existing ``out`` is replaced only if it is an index (has a manifest) or is empty (see
    :func:`nestrank.files.atomic_dir`).
    """
    return atomic_dir(out, MANIFEST, "a nestrank index")
