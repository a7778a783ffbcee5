"""``Run``: the one currency between retrieval stages (query id -> ranked documents).

Ranking order is score descending, ties broken by document id *descending*. That is the
order trec_eval (and so pytrec_eval / ir_measures) uses, so the rank a document has in a
``Run`` is the rank every evaluation tool sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from nestrank.checks import check_mapping
from nestrank.data.lines import check_ids, check_token, iter_lines, parse_float, parse_int
from nestrank.errors import ArgumentTypeError, DataFormatError
from nestrank.files import atomic_write
from nestrank.integrity import warn_once


def _rank_key(item: tuple[str, float]) -> tuple[float, _Desc]:
    return (-item[1], _Desc(item[0]))


class _Desc(str):
    """A string that sorts in reverse, for descending doc-id tie breaking."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__lt__(self, other)


class Run(Mapping[str, list[tuple[str, float]]]):
    """Ranked results per query: ``run[qid]`` is a list of ``(doc_id, score)``, best first.

    Build one from scores with :meth:`from_scores`, from a TREC run file with
    :meth:`read_trec`; write one with :meth:`write_trec`.
    """

    def __init__(self, ranked: Mapping[str, Iterable[tuple[str, float]]] | None = None) -> None:
        self._ranked: dict[str, list[tuple[str, float]]] = {}
        self.path: Path | None = None  # the file it was read from, if any (for error messages)
        check_mapping(ranked or {}, "ranked", "a mapping {query_id: [(doc_id, score), ...]}")
        for qid, items in (ranked or {}).items():
            self.add(qid, items)

    # -- construction -------------------------------------------------------------------
    def add(self, query_id: str, items: Iterable[tuple[str, float]] | Mapping[str, float]) -> None:
        """Set the results of one query from ``(doc_id, score)`` pairs (or ``{doc_id: score}``), in any order.

        Raises:
            ArgumentTypeError: ``items`` are not pairs of an id and a number.
            DataFormatError: a document appears twice, or has a NaN score.
        """
        if isinstance(items, Mapping):
            items = items.items()
        try:
            if isinstance(items, str | bytes):
                raise TypeError
            pairs = [(str(doc), float(score)) for doc, score in items]
        except (TypeError, ValueError):
            raise ArgumentTypeError(f"the results of query {query_id!r} must be (doc_id, score) pairs or "
                                    f"{{doc_id: score}}, got {type(items).__name__} {str(items)[:60]!r}") from None
        seen: set[str] = set()
        for doc, score in pairs:
            if doc in seen:
                raise DataFormatError(None, None, f"query {query_id!r}: document {doc!r} appears twice in the run",
                                      "keep one score per (query, document)")
            if math.isnan(score):
                raise DataFormatError(None, None, f"query {query_id!r}: document {doc!r} has a NaN score",
                                      "fix the model or scoring that produced NaN")
            seen.add(doc)
        self._ranked[str(query_id)] = sorted(pairs, key=_rank_key)

    @classmethod
    def from_scores(cls, scores: Mapping[str, Mapping[str, float]]) -> Run:
        """Build a run from ``{qid: {doc_id: score}}``."""
        return cls({qid: docs.items() for qid, docs in scores.items()})

    # -- Mapping ------------------------------------------------------------------------
    def __getitem__(self, query_id: str) -> list[tuple[str, float]]:
        return self._ranked[query_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ranked)

    def __len__(self) -> int:
        return len(self._ranked)

    def __repr__(self) -> str:
        depth = max((len(v) for v in self._ranked.values()), default=0)
        return f"Run({len(self)} queries, max depth {depth})"

    # -- views --------------------------------------------------------------------------
    def top(self, k: int) -> Run:
        """A new run with at most the ``k`` best documents per query."""
        out = Run()
        out._ranked = {qid: items[:k] for qid, items in self._ranked.items()}
        return out

    def doc_ids(self, query_id: str, k: int | None = None) -> list[str]:
        """The ranked document ids of one query (the top ``k`` if given)."""
        return [doc for doc, _ in self._ranked[query_id][:k]]

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{qid: {doc_id: score}}``, the form pytrec_eval and ir_measures accept."""
        return {qid: dict(items) for qid, items in self._ranked.items()}

    def check_ids(self, *, queries: Mapping[str, str] | None = None, corpus: object | None = None) -> None:
        """Raise :class:`DataFormatError` if a query or document id of the run is unknown.

        The error names the first offending line of the run file (when read from one).
        """
        pairs = ((q, d) for q, items in self._ranked.items() for d, _ in items)
        check_ids("run", self.path, self._ranked, pairs, queries=queries, corpus=corpus)

    # -- files --------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | Path) -> Run:
        """Read a TREC run (6 columns) or an MS MARCO run TSV (3 columns), detected from the first line."""
        path = Path(path)
        first = next((line for _, line in _lines(path)), None)
        if first is not None and len(first.split()) == 3:
            return cls.read_tsv(path)
        return cls.read_trec(path)

    @classmethod
    def read_trec(cls, path: str | Path) -> Run:
        """Read a TREC run file (``qid Q0 docid rank score tag``, whitespace separated).

        The file's rank column is ignored: documents are ordered by score (ties by doc id
        descending), exactly as trec_eval orders them. A file whose rank column runs against
        its scores in every query (scores that rise with the rank: distances, not similarities)
        is refused, since every metric would be computed on the reversed ranking; when only some
        queries do, a warning says so.
        """
        path = Path(path)
        scores: dict[str, dict[str, float]] = {}
        ranks: dict[str, list[tuple[str, float]]] = {}
        for line_no, line in _lines(path):
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(
                    path, line_no, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}",
                    "write one result per line in TREC run format",
                )
            qid, _, doc, _, score_text, _ = parts
            score = parse_float(score_text)
            if score is None:
                raise DataFormatError(path, line_no, f"score {score_text!r} is not a number",
                                      "the 5th column must be a number")
            if math.isnan(score):
                raise DataFormatError(path, line_no, "score is NaN", "fix the model or scoring that produced NaN")
            _put(scores, qid, doc, score, path, line_no)
            ranks.setdefault(qid, []).append((parts[3], score))
        _check_rank_order(path, ranks)
        return cls._from_file(scores, path)

    @classmethod
    def read_tsv(cls, path: str | Path) -> Run:
        """Read an MS MARCO run TSV (``qid<TAB>docid<TAB>rank``); the score becomes ``1 / rank``."""
        path = Path(path)
        scores: dict[str, dict[str, float]] = {}
        seen: dict[str, set[int]] = {}
        for line_no, line in _lines(path):
            parts = line.split()
            if len(parts) != 3:
                raise DataFormatError(path, line_no, f"expected 3 columns 'qid docid rank', got {len(parts)}",
                                      "write one 'qid<TAB>docid<TAB>rank' per line")
            qid, doc, rank_text = parts
            rank = parse_int(rank_text)
            if rank is None or rank < 1:
                raise DataFormatError(path, line_no, f"rank {rank_text!r} is not a positive integer",
                                      "ranks start at 1")
            if rank in seen.setdefault(qid, set()):
                raise DataFormatError(path, line_no, f"rank {rank} appears twice for query {qid!r}: the "
                                      "third column must hold ranks (1, 2, ...), not scores",
                                      "write distinct ranks per query, or a TREC run (6 columns) to keep scores")
            seen[qid].add(rank)
            _put(scores, qid, doc, 1.0 / rank, path, line_no)
        return cls._from_file(scores, path)

    @classmethod
    def _from_file(cls, scores: dict[str, dict[str, float]], path: Path) -> Run:
        if not scores:
            raise DataFormatError(path, None, "run file has no results", "give a run with at least one line")
        run = cls.from_scores(scores)
        run.path = path
        return run

    def write_trec(self, path: str | Path, tag: str = "nestrank") -> None:
        """Write the run atomically in TREC format, ranks 1..n in ranking order."""
        check_token(tag, "run tag", path)
        with atomic_write(path) as handle:
            for qid, doc, rank, score in self._rows(path):
                handle.write(f"{qid} Q0 {doc} {rank} {score!r} {tag}\n")

    def write_tsv(self, path: str | Path) -> None:
        """Write the run atomically as MS MARCO TSV (``qid<TAB>docid<TAB>rank``; scores are dropped)."""
        with atomic_write(path) as handle:
            for qid, doc, rank, _ in self._rows(path):
                handle.write(f"{qid}\t{doc}\t{rank}\n")

    def _rows(self, path: str | Path) -> Iterator[tuple[str, str, int, float]]:
        for qid, items in self._ranked.items():
            check_token(qid, "query id", path)
            for rank, (doc, score) in enumerate(items, 1):
                check_token(doc, "document id", path)
                yield qid, doc, rank, score


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataFormatError(path, None, "run file not found", "check the path of the run file")
    return iter_lines(path)


def _check_rank_order(path: Path, ranks: dict[str, list[tuple[str, float]]]) -> None:
    """Refuse a run whose rank column runs against its scores in every query; warn when some queries do.

    Only queries with distinct integer ranks and at least two different scores count.
    """
    inverted = ordered = 0
    example = None
    for qid, rows in ranks.items():
        numbered = [(parse_int(r), score) for r, score in rows]
        if len({score for _, score in rows}) < 2 or any(r is None for r, _ in numbered) \
                or len({r for r, _ in numbered}) != len(rows):
            continue
        by_rank = [score for _, score in sorted(numbered)]
        if all(a <= b for a, b in zip(by_rank, by_rank[1:], strict=False)):
            inverted += 1
            example = example or qid
        else:
            ordered += 1
    if not inverted:
        return
    problem = (f"in {inverted} of {inverted + ordered} queries (e.g. {example!r}) the score rises with the rank "
               "column, but rankings follow the scores (higher is better, as trec_eval reads them)")
    fix = "write scores where higher means more relevant (negate distances), ranked 1, 2, ... best first"
    if not ordered:
        raise DataFormatError(path, None, problem + ": every ranking would be read upside down", fix)
    warn_once(f"rank-order:{path.resolve()}", f"warning: {path}: {problem} (fix: {fix})")


def _put(scores: dict[str, dict[str, float]], qid: str, doc: str, score: float, path: Path, line_no: int) -> None:
    docs = scores.setdefault(qid, {})
    if doc in docs:
        raise DataFormatError(path, line_no, f"document {doc!r} listed twice for query {qid!r}",
                              "keep one line per (query, document)")
    docs[doc] = score
