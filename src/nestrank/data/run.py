"""``Run``: the one currency between retrieval stages (query id -> ranked documents).

Ranking order is score descending, ties broken by document id *descending*. That is the
order trec_eval (and so pytrec_eval / ir_measures) uses, so the rank a document has in a
``Run`` is the rank every evaluation tool sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from nestrank.errors import DataFormatError
from nestrank.files import atomic_write


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
        for qid, items in (ranked or {}).items():
            self.add(qid, items)

    # -- construction -------------------------------------------------------------------
    def add(self, query_id: str, items: Iterable[tuple[str, float]]) -> None:
        """Set the results of one query from ``(doc_id, score)`` pairs, in any order."""
        pairs = [(str(doc), float(score)) for doc, score in items]
        seen: set[str] = set()
        for doc, score in pairs:
            if doc in seen:
                raise ValueError(f"query {query_id!r}: document {doc!r} appears twice in the run")
            if math.isnan(score):
                raise ValueError(f"query {query_id!r}: document {doc!r} has a NaN score")
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

    # -- TREC files ---------------------------------------------------------------------
    @classmethod
    def read_trec(cls, path: str | Path) -> Run:
        """Read a TREC run file (``qid Q0 docid rank score tag``, whitespace separated).

        The file's rank column is ignored: documents are ordered by score (ties by doc id
        descending), exactly as trec_eval orders them.
        """
        path = Path(path)
        scores: dict[str, dict[str, float]] = {}
        try:
            handle = path.open(encoding="utf-8")
        except FileNotFoundError:
            raise DataFormatError(path, None, "run file not found") from None
        with handle:
            line_no = 0
            try:
                for line_no, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    parts = line.split()
                    if len(parts) != 6:
                        raise DataFormatError(
                            path, line_no, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}",
                            "write one result per line in TREC run format",
                        )
                    qid, _, doc, _, score_text, _ = parts
                    try:
                        score = float(score_text)
                    except ValueError:
                        raise DataFormatError(path, line_no, f"score {score_text!r} is not a number") from None
                    if math.isnan(score):
                        raise DataFormatError(path, line_no, "score is NaN")
                    docs = scores.setdefault(qid, {})
                    if doc in docs:
                        raise DataFormatError(
                            path, line_no, f"document {doc!r} listed twice for query {qid!r}",
                            "keep one line per (query, document)",
                        )
                    docs[doc] = score
            except UnicodeDecodeError as exc:
                raise DataFormatError(path, line_no + 1, f"not valid UTF-8 ({exc.reason})", "re-encode the file as UTF-8") from None
        return cls.from_scores(scores)

    def write_trec(self, path: str | Path, tag: str = "nestrank") -> None:
        """Write the run atomically in TREC format, ranks 1..n in ranking order."""
        with atomic_write(path) as handle:
            for qid, items in self._ranked.items():
                for rank, (doc, score) in enumerate(items, 1):
                    handle.write(f"{qid} Q0 {doc} {rank} {score!r} {tag}\n")
