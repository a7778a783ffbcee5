"""Index directories: a ``manifest.json`` that names the method, and the files the method needs.

Every index nestrank writes is a directory holding a ``manifest.json`` (see
:mod:`nestrank.retrieve.manifest`) plus whatever files the method needs. :func:`open_index`
reads the manifest and hands the directory to the class registered for its ``method`` in
:data:`INDEX_TYPES`. To add a method, write a class with ``load(path, mmap=..., verify=...)``,
``search(queries, k, threads=...)`` and ``check_corpus(corpus)`` (see :class:`SearchIndex`)
and add one line to :data:`INDEX_TYPES`.

Indexes are built in a temporary sibling directory and renamed into place only when
complete (:func:`staged_index_dir`), so a crash never leaves a half-written index. Every index
records the checksums of its files and the fingerprint of the corpus it was built from
(``checksums.json``, :mod:`nestrank.integrity`); loading verifies them.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from nestrank.data import Corpus, Run
from nestrank.errors import ArgumentTypeError, DataFormatError
from nestrank.files import atomic_dir
from nestrank.integrity import check_verify
from nestrank.retrieve.manifest import MANIFEST, read_manifest

#: ``method`` in a manifest -> ``"module:Class"`` that loads it (imported only when used).
INDEX_TYPES: dict[str, str] = {
    "bm25": "nestrank.retrieve.bm25:BM25Index",
    "dense": "nestrank.retrieve.dense_index:DenseIndex",
    "hybrid": "nestrank.retrieve.hybrid_index:HybridIndex",
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

    def check_corpus(self, corpus: Corpus) -> None:
        """Raise :class:`~nestrank.errors.ArtifactError` unless ``corpus`` is the corpus the index was built from."""
        ...


def open_index(directory: str | Path, mmap: bool = True, *, verify: str = "fast",
               corpus: Corpus | None = None) -> SearchIndex:
    """Load any nestrank index directory, dispatching on its manifest's ``method``.

    ``verify`` checks the index files against their checksums (``fast``, the default; ``full``;
    ``none``: see :mod:`nestrank.integrity`). With ``corpus``, the index must have been built from
    it (same document ids in the same order).

    Raises:
        ArtifactError: a damaged or incomplete index, or one built from another corpus.
    """
    if not isinstance(directory, str | Path):
        raise ArgumentTypeError(f"directory must be a path (str or Path), got {type(directory).__name__}")
    check_verify(verify)
    manifest = read_manifest(directory, "index")
    method = manifest["method"]
    target = INDEX_TYPES.get(method)
    if target is None:
        raise DataFormatError(Path(directory) / MANIFEST, None, f"unknown index method {method!r}",
                              f"this nestrank reads: {', '.join(sorted(INDEX_TYPES))}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    index = cls.load(directory, mmap=mmap, verify=verify)
    if corpus is not None:
        index.check_corpus(corpus)
    return index


def staged_index_dir(out: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Yield an empty temporary directory next to ``out``; move it to ``out`` on success.

    An existing ``out`` is replaced only if it is an index (has a manifest) or is empty (see
    :func:`nestrank.files.atomic_dir`).
    """
    return atomic_dir(out, MANIFEST, "a nestrank index")
