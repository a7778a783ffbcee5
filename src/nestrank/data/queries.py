"""Query sets: ``{query_id: text}`` read from JSONL (BEIR) or TSV (MS MARCO, TREC DL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from nestrank.checks import check_text_mapping
from nestrank.data.corpus import ID_KEYS, detect_format
from nestrank.data.lines import iter_lines, one_line, parse_json_object
from nestrank.errors import DataFormatError, UnknownIdError


class Queries(Mapping[str, str]):
    """An ordered mapping of query id to query text."""

    def __init__(self, items: Mapping[str, str] | None = None, path: Path | None = None) -> None:
        self._items: dict[str, str] = dict(check_text_mapping(items or {}, "items", "{query_id: text}"))
        self.path = path

    def __getitem__(self, query_id: str) -> str:
        try:
            return self._items[query_id]
        except KeyError:
            where = f" in {self.path}" if self.path else ""
            raise UnknownIdError(f"unknown query id {query_id!r}{where}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Queries({len(self)} queries)"

    def subset(self, query_ids: list[str] | set[str]) -> Queries:
        """The queries whose ids are in ``query_ids``, in this object's order."""
        return Queries({q: t for q, t in self._items.items() if q in query_ids}, self.path)

    @classmethod
    def read(cls, path: str | Path, fmt: str | None = None, field: str = "title") -> Queries:
        """Read ``queries.jsonl`` (``_id``/``id`` + ``text``), ``queries.tsv`` (``id<TAB>text``) or a TREC topic
        file (``<top><num><title><desc><narr>``; ``field`` chooses the text: title, desc, narr or title+desc)."""
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(path, None, "queries file not found",
                                  "check the path (a .jsonl or .tsv file, or a TREC topic file)")
        fmt = fmt or detect_format(path)
        if fmt == "trec":
            from nestrank.data.trec import read_trec_topics

            return cls(read_trec_topics(path, field), path)
        items: dict[str, str] = {}
        first_line: dict[str, int] = {}
        for line_no, line in iter_lines(path):
            qid, text = _parse(line, fmt, path, line_no)
            if not qid.strip():
                raise DataFormatError(path, line_no, "empty query id", "give every query a non-empty id")
            if qid in items:
                raise DataFormatError(path, line_no, f"duplicate query id {qid!r} (first at line {first_line[qid]})",
                                      "give every query a unique id")
            if not text.strip():
                raise DataFormatError(path, line_no, f"query {qid!r} has empty text", "remove the query or give it text")
            items[qid] = text
            first_line[qid] = line_no
        if not items:
            raise DataFormatError(path, None, "no queries in file", "give a non-empty queries file")
        return cls(items, path)

    def write(self, path: str | Path, fmt: str | None = None) -> None:
        """Write as JSONL or TSV (by ``fmt``, else the suffix ``.jsonl``/``.tsv``), atomically.

        TSV turns tabs and newlines inside a query into spaces.
        """
        from nestrank.files import atomic_write

        path = Path(path)
        fmt = fmt or detect_format(path)
        if fmt not in ("jsonl", "tsv"):
            raise DataFormatError(path, None, f"unknown queries format {fmt!r}", "use jsonl or tsv")
        with atomic_write(path) as handle:
            for qid, text in self._items.items():
                if fmt == "jsonl":
                    handle.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
                else:
                    handle.write(f"{qid}\t{one_line(text)}\n")


def _parse(line: str, fmt: str, path: Path, line_no: int) -> tuple[str, str]:
    if fmt == "jsonl":
        obj = parse_json_object(line, path, line_no)
        qid = next((obj[k] for k in ID_KEYS if k in obj), None)
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            raise DataFormatError(path, line_no, "missing query id ('_id' or 'id')",
                                  'write lines like {"_id": "q1", "text": "..."}')
        text = obj.get("text", obj.get("query"))
        if not isinstance(text, str):
            raise DataFormatError(path, line_no, f"query {qid!r} has no string 'text' field",
                                  "add the query as a 'text' string")
        return str(qid), text
    if fmt != "tsv":
        raise DataFormatError(path, None, f"unknown queries format {fmt!r}", "use jsonl or tsv")
    parts = line.split("\t")
    if len(parts) != 2:
        raise DataFormatError(path, line_no, f"expected 'id<TAB>text', got {len(parts)} columns",
                              "write one 'id<TAB>text' per line with no tabs inside the text")
    return parts[0], parts[1]


def sample_ids(ids: Iterable[str], n: int, seed: int = 0) -> list[str]:
    """``n`` ids drawn with ``random.Random(seed)`` from the sorted ``ids`` (all of them when ``n`` is larger), sorted.

    The same ids, ``n`` and ``seed`` always give the same subset, so a run made on a sample
    and its evaluation agree on the queries.
    """
    import random

    from nestrank.errors import ConfigError

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the sample size must be a positive integer, got {n!r}")
    pool = sorted(ids)
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))))
