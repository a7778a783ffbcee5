"""Line-oriented data files: reading lines, writing cells and ids, and finding the line at fault.

Every reader in :mod:`nestrank.data` goes through :func:`iter_lines` (or :func:`decode_line`),
so a file that is not UTF-8 fails the same way everywhere: a
:class:`~nestrank.errors.DataFormatError` naming the file, the 1-based line and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from nestrank.errors import DataFormatError

_CELL_BREAKS = str.maketrans({"\t": " ", "\r": " ", "\n": " "})
#: Numbers as data files write them: ASCII digits only (Python's int() and float() also take "1_000" and "٣").
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
#: What :func:`check_ids` says about an unknown document: (verb, counted item, fix) per file kind.
_UNKNOWN_DOCUMENT = {
    "qrels": ("judges", "judgement", "check that qrels and corpus match"),
    "run": ("ranks", "result", "check that the run was made on this corpus"),
}


def decode_line(raw: bytes, path: Path | str | None, line_no: int) -> str:
    """Decode one raw line as UTF-8 (a BOM on line 1 is dropped), without its line ending.

    Raises :class:`DataFormatError` naming the file and line when the bytes are not UTF-8.
    """
    try:
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, line_no, f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                              "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    return line.rstrip("\r\n")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line of a UTF-8 file, streaming."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            line = decode_line(raw, path, line_no)
            if line.strip():
                yield line_no, line


def parse_json_object(line: str, path: Path | str | None, line_no: int) -> dict:
    """Parse one JSONL line that must hold a JSON object. Raises :class:`DataFormatError`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, line_no, f"bad JSON ({exc.msg} at column {exc.colno})",
                              "write one complete JSON object per line") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, line_no, f"expected a JSON object per line, got {type(obj).__name__}",
                              "write one JSON object ({...}) per line")
    return obj


def parse_int(text: str) -> int | None:
    """``text`` as an integer when it is one written in ASCII digits (``-2``, ``+1``, ``17``), else ``None``."""
    return int(text) if _INT.fullmatch(text) else None


def parse_float(text: str) -> float | None:
    """``text`` as a float when it is a plain decimal number (``1``, ``-0.5``, ``2e-3``, ``inf``, ``nan``), else ``None``."""
    return float(text) if _FLOAT.fullmatch(text) else None


def one_line(text: str) -> str:
    """Replace tabs and line breaks by spaces, so the text fits one TSV cell (other text is kept)."""
    return text.translate(_CELL_BREAKS)


def check_token(value: str, what: str, path: str | Path | None = None) -> None:
    """Reject ids that whitespace-separated formats (TREC, TSV) cannot hold (writing ``path``)."""
    if not value or value != "".join(value.split()):
        raise DataFormatError(path, None, f"cannot write {what} {value!r}: TREC/TSV ids must be non-empty "
                              "and without whitespace", "write JSONL instead, or fix the id")


def find_line(path: Path | None, predicate: Callable[[list[str]], bool]) -> int | None:
    """The first line number of ``path`` whose whitespace-split fields satisfy ``predicate``."""
    if path is None or not path.is_file():
        return None
    for line_no, line in iter_lines(path):
        if predicate(line.split()):
            return line_no
    return None


def check_ids(kind: Literal["qrels", "run"], path: Path | None, query_ids: Iterable[str],
              pairs: Iterable[tuple[str, str]], *, queries: Mapping[str, str] | None = None,
              corpus: object | None = None) -> None:
    """Raise :class:`DataFormatError` if a query id is not in ``queries`` or a document not in ``corpus``.

    ``query_ids`` and the ``(query_id, doc_id)`` ``pairs`` are those of a qrels or run
    (``kind``) read from ``path`` (``None`` when built in memory); ``pairs`` is consumed only
    when ``corpus`` (anything supporting ``in``) is given. The error names the first
    offending line of ``path``.
    """
    if queries is not None:
        unknown = [q for q in query_ids if q not in queries]
        if unknown:
            line = find_line(path, lambda parts: bool(parts) and parts[0] == unknown[0])
            raise DataFormatError(path, line, f"{len(unknown)} query id(s) of the {kind} are not in the queries, "
                                  f"e.g. {unknown[0]!r}", f"check that {kind} and queries come from one dataset")
    if corpus is not None:
        bad = [(q, d) for q, d in pairs if d not in corpus]  # type: ignore[operator]
        if bad:
            qid, doc = bad[0]
            verb, item, fix = _UNKNOWN_DOCUMENT[kind]
            line = find_line(path, lambda parts: len(parts) >= 3 and parts[0] == qid and doc in parts[1:3])
            raise DataFormatError(path, line, f"query {qid!r} {verb} document {doc!r}, which is not in the corpus "
                                  f"({len(bad)} such {item}(s))", fix)
