"""First-stage runs cached as TREC files, reused only when they verifiably hold what was asked for.

:func:`cached_run` searches the queries once and writes the run atomically, with a record
next to it (``RUN.cache.json``): the run file's size and SHA-256
(:func:`nestrank.integrity.file_record`), a fingerprint of the queries (ids and texts), ``k``
and what the caller says the run was built from (``built_from``: the method, the corpus
fingerprint...). A later call with the same queries, ``k`` and ``built_from`` reads the file
back instead of searching, without building the index when ``stage`` is a factory. A file
that is damaged, was changed, or has no record (written by something else), or a record of
other queries or settings, is searched again and replaced, with a one-line warning saying why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nestrank.data import Run
from nestrank.errors import ArtifactError, ConfigError
from nestrank.files import atomic_write
from nestrank.integrity import check_file, file_record, ids_fingerprint

__all__ = ["RECORD_SUFFIX", "cached_run", "cached_runs"]

RECORD_SUFFIX = ".cache.json"
RECORD_KIND = "nestrank-cached-run"
log = logging.getLogger("nestrank")

#: Something that searches (``.search(queries, k)``: a FirstStage or an index), or a function returning one.
Searcher = Any


def cached_run(stage: Searcher | Callable[[], Searcher], queries: Mapping[str, str], path: str | Path, *, k: int = 100,
               built_from: Mapping[str, Any] | None = None, tag: str = "nestrank") -> Run:
    """The top ``k`` of ``stage`` for ``queries``, read from ``path`` when a valid cached run is there.

    Args:
        stage: anything with ``search(queries, k)`` (a :class:`~nestrank.pipeline.FirstStage`, a
            BM25 or dense index), or a function returning one, called only when the run is computed.
        queries: ``{query_id: text}``.
        path: the TREC run file (its record goes to ``path`` + :data:`RECORD_SUFFIX`).
        k: results per query.
        built_from: JSON-able facts the run depends on besides the queries and ``k`` (e.g.
            ``{"method": "bm25", "corpus": ids_fingerprint(corpus ids)}``): a cached run of other facts is recomputed.
        tag: the run tag written in the file.
    """
    return cached_runs(stage, {"run": queries}, {"run": path}, k=k, built_from=built_from, tag=tag)["run"]


def cached_runs(stage: Searcher | Callable[[], Searcher], splits: Mapping[str, Mapping[str, str]],
                paths: Mapping[str, str | Path], *, k: int = 100, built_from: Mapping[str, Any] | None = None,
                tag: str = "nestrank") -> dict[str, Run]:
    """:func:`cached_run` for several query sets (``{name: queries}``, written to ``paths[name]``), with the
    stage opened at most once."""
    missing = [name for name in splits if name not in paths]
    if missing:
        raise ConfigError(f"cached_runs: no path for the query set {missing[0]!r} (fix: give paths[{missing[0]!r}])")
    opened: list[Searcher] = []
    runs = {}
    for name, queries in splits.items():
        path = Path(paths[name])
        record = {"kind": RECORD_KIND, "k": k, "queries": _queries_fingerprint(queries),
                  "built_from": dict(built_from or {})}
        reason = _stale(path, record)
        if reason is None:
            runs[name] = Run.read_trec(path)
            continue
        if reason:
            log.warning(f"warning: {path}: {reason}; searching again")
        if not opened:
            opened.append(stage() if callable(stage) and not hasattr(stage, "search") else stage)
        runs[name] = opened[0].search(queries, k)
        runs[name].write_trec(path, tag=tag)
        with atomic_write(_record_path(path)) as handle:
            json.dump({**record, "file": file_record(path)}, handle, indent=1, sort_keys=True)
            handle.write("\n")
    return runs


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def _queries_fingerprint(queries: Mapping[str, str]) -> str:
    return ids_fingerprint([f"{qid}\t{text}" for qid, text in sorted(queries.items())])


def _stale(path: Path, wanted: Mapping[str, Any]) -> str | None:
    """``None`` when ``path`` holds the run ``wanted`` describes; ``""`` when there is no run; else why not."""
    record_path = _record_path(path)
    if not path.is_file():
        return ""
    if not record_path.is_file():
        return f"no {record_path.name} records what this run holds"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{record_path.name} is unreadable"
    if not isinstance(record, dict) or not isinstance(record.get("file"), dict):
        return f"{record_path.name} is not a cached-run record"
    changed = [key for key in wanted if record.get(key) != wanted[key]]
    if changed:
        return f"cached for other {' and '.join(changed)}"
    try:
        check_file(path, record["file"], "full", what="cached run", fix="search again")
    except ArtifactError:
        return "the file differs from its checksum (damaged or changed)"
    return None
