"""TREC SGML document collections and topic files, the format of CACM, Vaswani, Robust04 and most TREC sets.

Documents (one or many per file; plain or gzipped; a file, several files or a directory)::

    <DOC>
    <DOCNO> FBIS3-10082 </DOCNO>
    <HEADLINE> ... </HEADLINE>        (the title: TITLE, HEAD, HEADLINE, HL, TI or HEADER)
    <TEXT> ... </TEXT>                (the text: everything else, tags stripped)
    </DOC>

Topics (fields often lack closing tags; a field runs to the next tag)::

    <top>
    <num> Number: 301
    <title> International Organized Crime
    <desc> Description:
    Identify organizations that participate in international criminal activity ...
    <narr> Narrative:
    A relevant document must as a minimum identify the organization ...
    </top>

Character entities (``&amp;``...) are decoded and whitespace is folded, like Anserini's
``TrecCollection`` reader.
"""

from __future__ import annotations

import gzip
import html
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from nestrank.data.document import Document
from nestrank.errors import ConfigError, DataFormatError

__all__ = ["TOPIC_FIELDS", "is_trec_sgml", "iter_trec_documents", "read_trec_topics", "trec_files"]

TITLE_TAGS = ("TITLE", "HEAD", "HEADLINE", "HL", "TI", "HEADER")
#: Topic fields one can query with; ``title+desc`` joins the two.
TOPIC_FIELDS = ("title", "desc", "narr", "title+desc")
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_DOCNO = re.compile(r"<DOCNO>(.*?)</DOCNO>", re.S | re.I)
_TOPIC_TAG = re.compile(r"<(num|title|desc|narr)>", re.I)
_PREFIXES = {"num": "number:", "desc": "description:", "narr": "narrative:", "title": "topic:"}


def trec_files(path: str | Path) -> list[Path]:
    """The files of a collection: ``path`` itself, or every regular file below a directory (sorted, hidden ones skipped)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                              for part in p.relative_to(path).parts))
        if not files:
            raise DataFormatError(path, None, "directory holds no files", "point to a TREC collection directory")
        return files
    if not path.is_file():
        raise DataFormatError(path, None, "file or directory not found", "check the path")
    return [path]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix.lower() in (".gz", ".z") else open
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                yield line_no, raw.decode("utf-8", errors="replace")
    except (OSError, EOFError) as exc:  # a truncated or non-gzip .gz file
        raise DataFormatError(path, None, f"cannot read it ({exc})", "re-download or re-compress the file") from None


def is_trec_sgml(path: str | Path, tag: str = "DOC") -> bool:
    """Whether ``path`` (a file or the first file of a directory) starts with ``<tag>`` (``DOC`` or ``top``)."""
    files = trec_files(path)
    for _, line in _lines(files[0]):
        if line.strip():
            return line.strip().upper().startswith(f"<{tag.upper()}")
    return False


def _clean(text: str) -> str:
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()


def _document(block: str, path: Path, line_no: int) -> Document:
    match = _DOCNO.search(block)
    if match is None or not match.group(1).strip():
        raise DataFormatError(path, line_no, "<DOC> without a <DOCNO>...</DOCNO>", "give every document a DOCNO")
    doc_id = match.group(1).strip()
    body = block[match.end():]
    title = ""
    for tag in TITLE_TAGS:
        found = re.search(rf"<{tag}\b[^>]*>(.*?)</{tag}>", body, re.S | re.I)
        if found:
            title = _clean(found.group(1))
            body = body[:found.start()] + " " + body[found.end():]
            break
    return Document(doc_id, _clean(body), title)


def iter_trec_documents(paths: str | Path | Iterable[str | Path]) -> Iterator[Document]:
    """Stream the documents of TREC SGML files (a path, a directory, or several of them), in file order."""
    sources = [paths] if isinstance(paths, str | Path) else list(paths)
    for source in sources:
        for path in trec_files(source):
            block: list[str] | None = None
            start = 0
            for line_no, line in _lines(path):
                upper = line.lstrip().upper()
                if upper.startswith("<DOC>"):
                    if block is not None:
                        raise DataFormatError(path, line_no, f"<DOC> inside the document opened at line {start}",
                                              "close every <DOC> with </DOC>")
                    block, start = [line.split(">", 1)[1]], line_no
                elif upper.startswith("</DOC>"):
                    if block is None:
                        raise DataFormatError(path, line_no, "</DOC> without an opening <DOC>", "check the file")
                    yield _document("".join(block), path, start)
                    block = None
                elif block is not None:
                    block.append(line)
            if block is not None:
                raise DataFormatError(path, start, "<DOC> never closed (the file ends inside it)",
                                      "the file may be truncated: re-download it")


def read_trec_topics(path: str | Path, field: str = "title") -> dict[str, str]:
    """``{topic number: text}`` from a TREC topic file, querying with ``field`` (see :data:`TOPIC_FIELDS`)."""
    if field not in TOPIC_FIELDS:
        raise ConfigError(f"unknown topic field {field!r}; choose one of {', '.join(TOPIC_FIELDS)}")
    topics: dict[str, str] = {}
    for file in trec_files(path):
        text = "".join(line for _, line in _lines(file))
        for match in re.finditer(r"<top>(.*?)</top>", text, re.S | re.I):
            line_no = text.count("\n", 0, match.start()) + 1
            fields = _topic_fields(match.group(1))
            number = fields.get("num", "")
            if not number:
                raise DataFormatError(file, line_no, "<top> without a <num>", "give every topic a number")
            wanted = [fields.get(name, "") for name in field.split("+")]
            if not any(wanted):
                raise DataFormatError(file, line_no, f"topic {number} has no <{field}> text",
                                      "choose another field (title, desc, narr, title+desc)")
            if number in topics:
                raise DataFormatError(file, line_no, f"topic {number} appears twice", "keep one copy of each topic")
            topics[number] = " ".join(part for part in wanted if part)
        if not topics:
            raise DataFormatError(file, None, "no <top>...</top> topics found", "is this a TREC topic file?")
    return topics


def _topic_fields(block: str) -> dict[str, str]:
    """``{field: text}`` of one topic; a field runs to the next tag, its "Number:"-style label removed."""
    fields: dict[str, str] = {}
    tags = list(_TOPIC_TAG.finditer(block))
    for tag, after in zip(tags, [*tags[1:], None], strict=True):
        name = tag.group(1).lower()
        value = _clean(block[tag.end():after.start() if after else len(block)])
        prefix = _PREFIXES.get(name, "")
        if value.lower().startswith(prefix):
            value = value[len(prefix):].strip()
        fields[name] = value
    return fields
