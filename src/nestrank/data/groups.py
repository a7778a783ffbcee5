"""Training groups: a query with its positive and negative documents.

One internal type, :class:`TrainingGroup`, read from and written to three JSONL formats
(the format of a file is detected from its first line; every line must match it):

- ``tevatron-ids`` (Tevatron 2): ``{"query_id", "query_text", "positive_document_ids",
  "negative_document_ids"}``; ids are resolved against a :class:`~nestrank.data.Corpus`, and
  an empty or missing ``query_text`` is looked up in :class:`~nestrank.data.Queries`.
- ``tevatron-passages`` (Tevatron 1): ``{"query_id", "query", "positive_passages",
  "negative_passages"}`` with passages ``{"docid", "title", "text"[, "score"]}``.
- ``flagembedding``: ``{"query", "pos", "neg"[, "pos_scores", "neg_scores"]}`` with plain
  string passages (their documents get empty ids).

Reading streams (one line at a time) and every problem raises
:class:`~nestrank.errors.DataFormatError` naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nestrank.data.corpus import Corpus, Document
from nestrank.data.lines import iter_lines, parse_json_object
from nestrank.errors import DataFormatError
from nestrank.files import atomic_write

GroupFormat = Literal["tevatron-ids", "tevatron-passages", "flagembedding"]
GROUP_FORMATS: tuple[str, ...] = ("tevatron-ids", "tevatron-passages", "flagembedding")
_Fail = Callable[[str, str], DataFormatError]
_MARKERS = {"tevatron-ids": "positive_document_ids", "tevatron-passages": "positive_passages", "flagembedding": "pos"}


@dataclass
class TrainingGroup:
    """A query, its positive documents (at least one) and negative documents.

    ``positive_scores``/``negative_scores`` are optional teacher scores (one per document),
    e.g. FlagEmbedding's distillation scores.
    """

    query: str
    positives: list[Document]
    negatives: list[Document] = field(default_factory=list)
    query_id: str | None = None
    positive_scores: list[float] | None = None
    negative_scores: list[float] | None = None

    def __post_init__(self) -> None:
        problem = group_problem(self.query, self.positives, self.negatives, self.positive_scores, self.negative_scores)
        if problem is not None:
            raise ValueError(f"{problem[0]} (fix: {problem[1]})")


def group_problem(query: str, positives: list[Document], negatives: list[Document],
                  positive_scores: list[float] | None, negative_scores: list[float] | None) -> tuple[str, str] | None:
    """The first thing wrong with a group's parts as ``(problem, fix)``, or ``None`` when it is valid."""
    if not query.strip():
        return "empty query text", "give the query a text"
    if not positives:
        return "no positive document", "drop the group or add at least one positive"
    for kind, docs in (("positive", positives), ("negative", negatives)):
        for doc in docs:
            if not doc.full_text.strip():
                return f"{kind} document {doc.id!r} has empty text", "remove it or give it text"
    for kind, docs, scores in (("positive", positives, positive_scores), ("negative", negatives, negative_scores)):
        if scores is not None and len(scores) != len(docs):
            return (f"{len(scores)} {kind} scores for {len(docs)} {kind} documents",
                    f"give one score per {kind} document, or none")
        if scores is not None and not all(math.isfinite(x) for x in scores):
            return f"a {kind} score is not a finite number", "write finite numeric scores"
    return None


def detect_group_format(obj: Mapping[str, Any], path: Path | str | None = None, line_no: int | None = None) -> str:
    """The group format of one parsed JSONL object (see the module doc)."""
    found = [fmt for fmt, key in _MARKERS.items() if key in obj]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataFormatError(path, line_no, "not a training group: missing 'positive_document_ids' (Tevatron ids), "
                              "'positive_passages' (Tevatron passages) or 'pos' (FlagEmbedding)",
                              "write groups in one of these three formats")
    raise DataFormatError(path, line_no, f"ambiguous training group: has fields of {' and '.join(found)}",
                          "keep the fields of one format per line")


def read_groups(path: str | Path, corpus: Corpus | None = None, queries: Mapping[str, str] | None = None,
                fmt: str | None = None) -> Iterator[TrainingGroup]:
    """Stream the training groups of a JSONL file, one line at a time.

    The format is taken from ``fmt`` or detected from the first line; a later line in
    another format is an error. ``tevatron-ids`` files need ``corpus`` (to resolve document
    ids) and, for lines without ``query_text``, ``queries``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "training-group file not found", "check the path of the .jsonl file")
    if fmt is not None and fmt not in GROUP_FORMATS:
        raise DataFormatError(path, None, f"unknown training-group format {fmt!r}", f"use one of: {', '.join(GROUP_FORMATS)}")
    first_line = None
    for line_no, line in iter_lines(path):
        obj = parse_json_object(line, path, line_no)
        found = detect_group_format(obj, path, line_no)
        if fmt is None:
            fmt, first_line = found, line_no
        elif found != fmt:
            where = f"line {first_line}" if first_line else "the requested format"
            raise DataFormatError(path, line_no, f"mixed formats: this line is {found} but {where} is {fmt}",
                                  "write every line of a file in one format")
        yield _parse_group(obj, fmt, path, line_no, corpus, queries)


def _parse_group(obj: dict, fmt: str, path: Path, line_no: int, corpus: Corpus | None,
                 queries: Mapping[str, str] | None) -> TrainingGroup:
    def fail(problem: str, fix: str) -> DataFormatError:
        return DataFormatError(path, line_no, problem, fix)

    pos_scores = neg_scores = None
    if fmt == "tevatron-ids":
        query_id = _id(obj.get("query_id"), "query_id", fail)
        query = obj.get("query_text")
        query = "" if query is None else query
        if not isinstance(query, str):
            raise fail("'query_text' must be a string", "write the query text as a JSON string")
        if not query:
            if queries is None:
                raise fail(f"query {query_id!r} has no 'query_text'", "add 'query_text', or pass the queries "
                           "(Python: queries=..., CLI: --queries FILE)")
            if query_id not in queries:
                raise fail(f"query id {query_id!r} is not in the queries", "pass the queries file of this dataset")
            query = queries[query_id]
        positives = _resolve(_id_list(obj, "positive_document_ids", fail), corpus, fail)
        negatives = _resolve(_id_list(obj, "negative_document_ids", fail, required=False), corpus, fail)
    elif fmt == "tevatron-passages":
        query_id = _id(obj["query_id"], "query_id", fail) if obj.get("query_id") is not None else None
        query = _string(obj, "query", fail)
        positives, pos_scores = _passages(obj, "positive_passages", fail, required=True)
        negatives, neg_scores = _passages(obj, "negative_passages", fail, required=False)
    else:
        query_id = None
        query = _string(obj, "query", fail)
        positives = [Document("", text) for text in _string_list(obj, "pos", fail, required=True)]
        negatives = [Document("", text) for text in _string_list(obj, "neg", fail, required=False)]
        pos_scores = _scores(obj, "pos_scores", fail)
        neg_scores = _scores(obj, "neg_scores", fail)
    problem = group_problem(query, positives, negatives, pos_scores, neg_scores)
    if problem is not None:
        raise fail(*problem)
    return TrainingGroup(query, positives, negatives, query_id, pos_scores, neg_scores)


def _id(value: Any, name: str, fail: _Fail) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise fail(f"missing or invalid {name!r}", f"give every line a non-empty string {name!r}")
    return str(value)


def _string(obj: dict, key: str, fail: _Fail) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise fail(f"missing string field {key!r}", f"add {key!r} as a JSON string")
    return value


def _list(obj: dict, key: str, fail: _Fail, required: bool) -> list:
    if key not in obj:
        if required:
            raise fail(f"missing field {key!r}", f"add {key!r} as a JSON list")
        return []
    value = obj[key]
    if not isinstance(value, list):
        raise fail(f"field {key!r} must be a list, got {type(value).__name__}", f"write {key!r} as a JSON list")
    return value


def _id_list(obj: dict, key: str, fail: _Fail, required: bool = True) -> list[str]:
    return [_id(value, f"{key} entry", fail) for value in _list(obj, key, fail, required)]


def _string_list(obj: dict, key: str, fail: _Fail, required: bool) -> list[str]:
    values = _list(obj, key, fail, required)
    if not all(isinstance(v, str) for v in values):
        raise fail(f"field {key!r} must hold strings", f"write {key!r} as a list of passage texts")
    return values


def _scores(obj: dict, key: str, fail: _Fail) -> list[float] | None:
    if obj.get(key) is None:
        return None
    values = _list(obj, key, fail, required=True)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise fail(f"field {key!r} must hold numbers", f"write {key!r} as a list of numbers")
    return [float(v) for v in values]


def _passages(obj: dict, key: str, fail: _Fail, required: bool) -> tuple[list[Document], list[float] | None]:
    docs, scores = [], []
    for position, passage in enumerate(_list(obj, key, fail, required), 1):
        if not isinstance(passage, dict) or not isinstance(passage.get("text"), str):
            raise fail(f"{key}[{position}] is not an object with a string 'text'",
                       'write passages as {"docid": "...", "title": "...", "text": "..."}')
        title = passage.get("title")
        title = "" if title is None else title
        if not isinstance(title, str):
            raise fail(f"{key}[{position}] has a non-string 'title'", "write the title as a JSON string")
        doc_id = passage.get("docid")
        if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, str | int)):
            raise fail(f"{key}[{position}] has a 'docid' that is neither a string nor an integer",
                       "write the document id as a JSON string")
        docs.append(Document("" if doc_id is None else str(doc_id), passage["text"], title))
        scores.append(passage.get("score"))
    if not docs or any(s is None for s in scores):
        return docs, None
    if not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
        raise fail(f"a 'score' in {key!r} is not a number", "write passage scores as numbers")
    return docs, [float(s) for s in scores]


def _resolve(doc_ids: list[str], corpus: Corpus | None, fail: _Fail) -> list[Document]:
    if not doc_ids:
        return []
    if corpus is None:
        raise fail("document ids need a corpus to resolve them",
                   "pass the corpus (Python: corpus=Corpus.open(...), CLI: --corpus FILE)")
    missing = [d for d in doc_ids if d not in corpus]
    if missing:
        source = f" {corpus.path}" if corpus.path else ""
        raise fail(f"{len(missing)} document id(s) not in the corpus{source}: {', '.join(map(repr, missing[:5]))}",
                   "pass the corpus these groups were made from, or drop the unknown ids")
    return corpus.get_many(doc_ids)


def write_groups(path: str | Path, groups: Iterable[TrainingGroup], fmt: str = "tevatron-passages") -> int:
    """Write training groups as JSONL in ``fmt`` (see :data:`GROUP_FORMATS`), atomically.

    Returns the number of groups written. ``tevatron-ids`` stores only ids, so it needs
    groups whose query and documents all have ids (the corpus is not written).
    """
    if fmt not in GROUP_FORMATS:
        raise DataFormatError(path, None, f"unknown training-group format {fmt!r}", f"use one of: {', '.join(GROUP_FORMATS)}")
    count = 0
    with atomic_write(path) as handle:
        for group in groups:
            count += 1
            handle.write(json.dumps(_to_json(group, fmt, count, path), ensure_ascii=False) + "\n")
    return count


def _to_json(group: TrainingGroup, fmt: str, number: int, path: str | Path) -> dict:
    if fmt == "tevatron-ids":
        docs = group.positives + group.negatives
        if not group.query_id or not all(doc.id for doc in docs):
            raise DataFormatError(path, None, f"cannot write group {number} as tevatron-ids: it needs a query id "
                                  "and document ids (FlagEmbedding groups have none)",
                                  "write tevatron-passages or flagembedding instead")
        return {"query_id": group.query_id, "query_text": group.query,
                "positive_document_ids": [d.id for d in group.positives],
                "negative_document_ids": [d.id for d in group.negatives]}
    if fmt == "tevatron-passages":
        out: dict[str, Any] = {} if group.query_id is None else {"query_id": group.query_id}
        out["query"] = group.query
        out["positive_passages"] = _passage_dicts(group.positives, group.positive_scores)
        out["negative_passages"] = _passage_dicts(group.negatives, group.negative_scores)
        return out
    out = {"query": group.query, "pos": [d.full_text for d in group.positives],
           "neg": [d.full_text for d in group.negatives]}
    if group.positive_scores is not None:
        out["pos_scores"] = group.positive_scores
    if group.negative_scores is not None:
        out["neg_scores"] = group.negative_scores
    return out


def _passage_dicts(docs: list[Document], scores: list[float] | None) -> list[dict]:
    out = [{"docid": d.id, "title": d.title, "text": d.text} for d in docs]
    if scores is not None:
        for passage, score in zip(out, scores, strict=True):
            passage["score"] = score
    return out
