"""Relevance judgements: ``{query_id: {doc_id: grade}}``.

Reads BEIR/MS MARCO-style TSV (``query-id corpus-id score``, optional header) and TREC
qrels (``qid iteration docid grade``). Grades are integers; negative grades are kept (some
TREC collections judge spam as -1) and count as non-relevant.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from numbers import Integral
from pathlib import Path

from nestrank.checks import check_mapping
from nestrank.data.lines import check_ids, check_token, iter_lines, parse_int
from nestrank.errors import ArgumentTypeError, DataFormatError
from nestrank.files import atomic_write


class Qrels(Mapping[str, dict[str, int]]):
    """Judgements per query. ``qrels[qid]`` is ``{doc_id: grade}``."""

    def __init__(self, judgements: Mapping[str, Mapping[str, int]] | None = None, path: Path | None = None) -> None:
        check_mapping(judgements or {}, "judgements", "a mapping {query_id: {doc_id: grade}}")
        self._j: dict[str, dict[str, int]] = {}
        for qid, docs in (judgements or {}).items():
            check_mapping(docs, f"judgements[{qid!r}]", "a mapping {doc_id: grade}")
            bad = next(((d, g) for d, g in docs.items() if isinstance(g, bool) or not isinstance(g, Integral)), None)
            if bad is not None:
                raise ArgumentTypeError(f"judgements[{qid!r}][{bad[0]!r}]: the grade {bad[1]!r} is not an integer "
                                        "(grades are integers: 0 = not relevant, 1+ = relevant)")
            self._j[str(qid)] = {str(d): int(g) for d, g in docs.items()}
        self.path = path

    def __getitem__(self, query_id: str) -> dict[str, int]:
        return self._j[query_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._j)

    def __len__(self) -> int:
        return len(self._j)

    def __repr__(self) -> str:
        pairs = sum(len(d) for d in self._j.values())
        return f"Qrels({len(self)} queries, {pairs} judgements)"

    def relevant(self, query_id: str, min_grade: int = 1) -> set[str]:
        """Documents judged at least ``min_grade`` for a query (empty if unjudged)."""
        return {d for d, g in self._j.get(query_id, {}).items() if g >= min_grade}

    def to_dict(self) -> dict[str, dict[str, int]]:
        """A plain ``{qid: {doc_id: grade}}`` copy."""
        return {q: dict(d) for q, d in self._j.items()}

    @classmethod
    def read(cls, path: str | Path) -> Qrels:
        """Read a qrels file; the layout (3-column TSV or 4-column TREC) is detected per file.

        A first line whose grade column is not an integer (BEIR's ``query-id corpus-id score``)
        is taken as a header and skipped (only the first: a later one is an error).
        """
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(path, None, "qrels file not found", "check the path (BEIR .tsv or TREC qrels)")
        judgements: dict[str, dict[str, int]] = {}
        columns = None
        for number, (line_no, line) in enumerate(iter_lines(path)):
            parts = line.split()
            if number == 0 and len(parts) == 3 and not _is_int(parts[2]):
                continue  # BEIR header: query-id corpus-id score
            if columns is None:
                columns = len(parts)
                if columns not in (3, 4):
                    raise DataFormatError(path, line_no, f"expected 3 columns (qid docid grade) or 4 "
                                          f"(qid iter docid grade), got {columns}",
                                          "write 'qid<TAB>docid<TAB>grade' (BEIR) or 'qid 0 docid grade' (TREC)")
            if len(parts) != columns:
                raise DataFormatError(path, line_no, f"expected {columns} columns like the first line, got {len(parts)}",
                                      "use one layout for the whole file; ids must not contain spaces")
            qid, doc, grade_text = (parts[0], parts[1], parts[2]) if columns == 3 else (parts[0], parts[2], parts[3])
            if not _is_int(grade_text):
                raise DataFormatError(path, line_no, f"relevance grade {grade_text!r} is not an integer",
                                      "write integer grades (0 = not relevant, 1+ = relevant)")
            docs = judgements.setdefault(qid, {})
            if doc in docs:
                raise DataFormatError(path, line_no, f"document {doc!r} judged twice for query {qid!r}",
                                      "keep one judgement per (query, document)")
            docs[doc] = int(grade_text)
        if not judgements:
            raise DataFormatError(path, None, "no judgements in file", "give a qrels file with at least one line")
        return cls(judgements, path)

    def write_trec(self, path: str | Path) -> None:
        """Write TREC qrels (``qid 0 docid grade``), atomically."""
        with atomic_write(path) as handle:
            for qid, doc, grade in self._rows(path):
                handle.write(f"{qid} 0 {doc} {grade}\n")

    def write_tsv(self, path: str | Path) -> None:
        """Write BEIR TSV with its header, atomically."""
        with atomic_write(path) as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for qid, doc, grade in self._rows(path):
                handle.write(f"{qid}\t{doc}\t{grade}\n")

    def _rows(self, path: str | Path) -> Iterator[tuple[str, str, int]]:
        for qid, docs in self._j.items():
            check_token(qid, "query id", path)
            for doc, grade in docs.items():
                check_token(doc, "document id", path)
                yield qid, doc, grade

    def check_ids(self, *, queries: Mapping[str, str] | None = None, corpus: object | None = None) -> None:
        """Raise :class:`DataFormatError` if a judged query or document id is unknown.

        The error names the first offending line of the qrels file (when read from one).
        """
        pairs = ((q, d) for q, docs in self._j.items() for d in docs)
        check_ids("qrels", self.path, self._j, pairs, queries=queries, corpus=corpus)


def _is_int(text: str) -> bool:
    return parse_int(text) is not None
