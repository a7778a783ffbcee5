"""Relevance judgements: ``{query_id: {doc_id: grade}}``.

Reads BEIR/MS MARCO-style TSV (``query-id corpus-id score``, optional header) and TREC
qrels (``qid iteration docid grade``). Grades are integers; negative grades are kept (some
TREC collections judge spam as -1) and count as non-relevant.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from nestrank.errors import DataFormatError
from nestrank.files import atomic_write


class Qrels(Mapping[str, dict[str, int]]):
    """Judgements per query. ``qrels[qid]`` is ``{doc_id: grade}``."""

    def __init__(self, judgements: Mapping[str, Mapping[str, int]] | None = None, path: Path | None = None) -> None:
        self._j: dict[str, dict[str, int]] = {q: dict(d) for q, d in (judgements or {}).items()}
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
        """Read a qrels file; the layout (3-column TSV or 4-column TREC) is detected per file."""
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(path, None, "qrels file not found")
        judgements: dict[str, dict[str, int]] = {}
        columns = None
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise DataFormatError(path, line_no, f"not valid UTF-8 ({exc.reason})") from None
                if not line:
                    continue
                parts = line.split()
                if line_no == 1 and len(parts) == 3 and not _is_int(parts[2]):
                    continue  # BEIR header: query-id corpus-id score
                if columns is None:
                    columns = len(parts)
                    if columns not in (3, 4):
                        raise DataFormatError(path, line_no, f"expected 3 columns (qid docid grade) or 4 "
                                              f"(qid iter docid grade), got {columns}")
                if len(parts) != columns:
                    raise DataFormatError(path, line_no, f"expected {columns} columns like the first line, got {len(parts)}")
                qid, doc, grade_text = (parts[0], parts[1], parts[2]) if columns == 3 else (parts[0], parts[2], parts[3])
                if not _is_int(grade_text):
                    raise DataFormatError(path, line_no, f"relevance grade {grade_text!r} is not an integer")
                docs = judgements.setdefault(qid, {})
                if doc in docs:
                    raise DataFormatError(path, line_no, f"document {doc!r} judged twice for query {qid!r}",
                                          "keep one judgement per (query, document)")
                docs[doc] = int(grade_text)
        if not judgements:
            raise DataFormatError(path, None, "no judgements in file")
        return cls(judgements, path)

    def write_trec(self, path: str | Path) -> None:
        """Write TREC qrels (``qid 0 docid grade``), atomically."""
        with atomic_write(path) as handle:
            for qid, docs in self._j.items():
                for doc, grade in docs.items():
                    handle.write(f"{qid} 0 {doc} {grade}\n")

    def write_tsv(self, path: str | Path) -> None:
        """Write BEIR TSV with its header, atomically."""
        with atomic_write(path) as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in self._j.items():
                for doc, grade in docs.items():
                    handle.write(f"{qid}\t{doc}\t{grade}\n")

    def check_ids(self, *, queries: Mapping[str, str] | None = None, corpus: object | None = None) -> None:
        """Raise :class:`DataFormatError` if a judged query or document id is unknown."""
        if queries is not None:
            unknown = [q for q in self._j if q not in queries]
            if unknown:
                raise DataFormatError(self.path, None, f"{len(unknown)} judged query id(s) not in the queries, "
                                      f"e.g. {unknown[0]!r}", "check that qrels and queries come from one dataset")
        if corpus is not None:
            for qid, docs in self._j.items():
                for doc in docs:
                    if doc not in corpus:  # type: ignore[operator]
                        raise DataFormatError(self.path, None, f"query {qid!r} judges document {doc!r}, which "
                                              "is not in the corpus", "check that qrels and corpus match")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
