"""``manifest.json``: what a nestrank index or embeddings directory holds, and one reader for both.

An index directory's manifest (written by :func:`write_manifest`)::

    {"format_version": 1, "method": "bm25", "num_docs": 5183,
     "nestrank_version": "0.1.0", "params": {...method-specific...}}

An embeddings directory's manifest (kept by :mod:`nestrank.retrieve.embeddings`)::

    {"kind": "nestrank-embeddings", "format": 1, "model": ..., "dim": ..., "shards": {...}, ...}

:func:`read_manifest` reads either, with one contract: it returns the manifest, or raises
:class:`~nestrank.errors.DataFormatError` naming the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

from nestrank import __version__
from nestrank.errors import ArtifactError, DataFormatError
from nestrank.files import atomic_write
from nestrank.integrity import ids_fingerprint, verify_checksums

MANIFEST = "manifest.json"
INDEX_FORMAT = 1
EMBEDDINGS_KIND = "nestrank-embeddings"
EMBEDDINGS_FORMAT = 1
#: The fix for a damaged index.
REBUILD_INDEX = "rebuild the index with `nestrank index`"
ManifestKind = Literal["index", "embeddings"]


class _Kind(NamedTuple):
    noun: str
    what: str
    make: str  # how to make one
    remake: str  # what to do when it is broken
    version_key: str
    version: int


_KINDS: dict[str | None, _Kind] = {
    "index": _Kind("index", "a nestrank index", "build one with `nestrank index`", "rebuild the index",
                   "format_version", INDEX_FORMAT),
    "embeddings": _Kind("embeddings", "nestrank embeddings", "run `nestrank encode --out DIR` first",
                        "delete the directory and encode again", "format", EMBEDDINGS_FORMAT),
    None: _Kind("nestrank", "a nestrank index or embeddings directory",
                "pass a directory written by `nestrank index` or `nestrank encode`", "rebuild it", "", 0),
}


def manifest_kind(manifest: object) -> ManifestKind | None:
    """``"embeddings"``, ``"index"`` or ``None`` (not a nestrank manifest) for a parsed manifest."""
    if not isinstance(manifest, dict):
        return None
    if manifest.get("kind") == EMBEDDINGS_KIND:
        return "embeddings"
    return "index" if isinstance(manifest.get("method"), str) else None


def has_manifest(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``manifest.json`` (checked by :func:`read_manifest` when read)."""
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path, kind: ManifestKind | None = None, *, method: str | None = None
                  ) -> dict[str, Any]:
    """Read and check the ``manifest.json`` of an index or embeddings directory (``kind``; ``None``: either).

    ``method`` (``bm25``, ``dense``, ...) asks for an index of that method. Returns the
    manifest. Raises :class:`~nestrank.errors.DataFormatError` naming the path and the fix
    when the directory or its manifest is missing, the file is not readable JSON, it is not
    a nestrank manifest of ``kind`` (and ``method``), or its format is newer than this
    nestrank reads.
    """
    if method is not None:
        kind = "index"
    directory = Path(directory)
    path = directory / MANIFEST
    expected = _KINDS[kind]
    if not directory.is_dir():
        raise DataFormatError(directory, None, f"{expected.noun} directory not found (no {expected.noun} manifest)",
                              expected.make)
    if not path.is_file():
        raise DataFormatError(path, None, f"no {expected.noun} manifest (no manifest.json: not {expected.what})",
                              expected.make)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"unreadable manifest (bad JSON: {exc.msg})", expected.remake) from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, None, f"unreadable manifest ({exc})", expected.remake) from None
    found = manifest_kind(manifest)
    if found is None:
        raise DataFormatError(path, None, f"not {expected.what} manifest", expected.remake)
    if kind is not None and found != kind:
        raise DataFormatError(path, None, f"this directory holds {_KINDS[found].what}, not {expected.what}",
                              expected.make)
    actual = _KINDS[found]
    version = manifest.get(actual.version_key, actual.version)
    if not isinstance(version, int) or version > actual.version:
        raise DataFormatError(path, None, f"{actual.noun} format {version!r} is not one this nestrank understands "
                              f"(<= {actual.version})", f"upgrade nestrank, or {actual.remake}")
    if found == "index" and (isinstance(manifest.get("num_docs"), bool) or not isinstance(manifest.get("num_docs"), int)
                             or manifest["num_docs"] < 0 or not isinstance(manifest.get("params"), dict)):
        raise DataFormatError(path, None, "index manifest lacks a valid num_docs or params", actual.remake)
    if method is not None and manifest["method"] != method:
        raise DataFormatError(path, None, f"index method is {manifest['method']!r}, not {method!r}",
                              "open it with nestrank.retrieve.open_index")
    return manifest


def write_manifest(directory: str | Path, method: str, num_docs: int, params: Mapping[str, Any]) -> None:
    """Write an index directory's ``manifest.json`` (atomically)."""
    manifest = {
        "format_version": INDEX_FORMAT,
        "method": method,
        "num_docs": int(num_docs),
        "nestrank_version": __version__,
        "params": dict(params),
    }
    with atomic_write(Path(directory) / MANIFEST) as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")


def open_index_dir(directory: str | Path, method: str, verify: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an index directory's manifest (of ``method``) and check its files against ``checksums.json``.

    Returns the manifest and what the index records it was built from (``{}`` for an index
    of an older nestrank). See :func:`read_manifest` and :mod:`nestrank.integrity`.
    """
    manifest = read_manifest(directory, method=method)
    return manifest, verify_checksums(directory, verify, what=what, fix=REBUILD_INDEX) or {}


class CorpusCheck:
    """What an index class shares: :meth:`check_corpus`, from its ``path``, ``num_docs`` and ``corpus_fingerprint``."""

    path: Path | None
    num_docs: int
    corpus_fingerprint: str

    def check_corpus(self, corpus: Any) -> None:
        """Raise :class:`~nestrank.errors.ArtifactError` unless ``corpus`` (same ids, same order) built this index."""
        from nestrank.checks import check_corpus_arg

        ids = list(check_corpus_arg(corpus).ids)
        if ids_fingerprint(ids) == self.corpus_fingerprint:
            return
        differs = f"{self.num_docs} documents, the corpus given has {len(ids)}" if len(ids) != self.num_docs else \
            f"{self.num_docs} documents with other ids or in another order"
        where = f" ({corpus.path})" if getattr(corpus, "path", None) else ""
        raise ArtifactError(self.path or "index", None, f"this index was built from another corpus than the one "
                            f"given{where}: it holds {differs}", "give the corpus the index was built from, or "
                            "rebuild the index from this corpus with `nestrank index`")
