"""Query sets: ``{query_id: text}`` read from JSONL (BEIR) or TSV (MS MARCO, TREC DL)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from nestrank.data.corpus import ID_KEYS, detect_format
from nestrank.errors import DataFormatError


class Queries(Mapping[str, str]):
    """An ordered mapping of query id to query text."""

    def __init__(self, items: Mapping[str, str] | None = None, path: Path | None = None) -> None:
        self._items: dict[str, str] = dict(items or {})
        self.path = path

    def __getitem__(self, query_id: str) -> str:
        try:
            return self._items[query_id]
        except KeyError:
            where = f" in {self.path}" if self.path else ""
            raise KeyError(f"unknown query id {query_id!r}{where}") from None

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
    def read(cls, path: str | Path, fmt: str | None = None) -> Queries:
        """Read ``queries.jsonl`` (``_id``/``id`` + ``text``) or ``queries.tsv`` (``id<TAB>text``)."""
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(path, None, "queries file not found")
        fmt = fmt or detect_format(path)
        items: dict[str, str] = {}
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(path, line_no, f"not valid UTF-8 ({exc.reason})",
                                          "re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                qid, text = _parse(line, fmt, path, line_no)
                if qid in items:
                    raise DataFormatError(path, line_no, f"duplicate query id {qid!r}", "give every query a unique id")
                if not text.strip():
                    raise DataFormatError(path, line_no, f"query {qid!r} has empty text", "remove the query")
                items[qid] = text
        if not items:
            raise DataFormatError(path, None, "no queries in file")
        return cls(items, path)

    def write(self, path: str | Path) -> None:
        """Write as JSONL (``.jsonl``) or TSV (``.tsv``), atomically."""
        from nestrank.files import atomic_write

        path = Path(path)
        fmt = detect_format(path)
        with atomic_write(path) as handle:
            for qid, text in self._items.items():
                if fmt == "jsonl":
                    handle.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
                else:
                    handle.write(f"{qid}\t{_one_line(text)}\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse(line: str, fmt: str, path: Path, line_no: int) -> tuple[str, str]:
    if fmt == "jsonl":
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, line_no, f"bad JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, line_no, "expected a JSON object per line")
        qid = next((obj[k] for k in ID_KEYS if k in obj), None)
        if qid is None:
            raise DataFormatError(path, line_no, "missing query id ('_id' or 'id')")
        text = obj.get("text", obj.get("query"))
        if not isinstance(text, str):
            raise DataFormatError(path, line_no, f"query {qid!r} has no string 'text' field")
        return str(qid), text
    parts = line.split("\t")
    if len(parts) != 2:
        raise DataFormatError(path, line_no, f"expected 'id<TAB>text', got {len(parts)} columns")
    return parts[0], parts[1]
