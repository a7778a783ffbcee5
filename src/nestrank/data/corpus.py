"""Document collections, streamed from disk.

A :class:`Corpus` opened from a file keeps only document ids and byte offsets in memory:
iterating streams documents from the file and ``corpus[doc_id]`` seeks to one line. That is
what lets an 8.8M-passage collection (MS MARCO) be indexed and reranked without holding all
text as Python objects.

Supported files (picked by suffix, or by ``fmt=``):

- ``jsonl``: one JSON object per line with an id (``_id``, ``id``, ``docid`` or ``doc_id``),
  an optional ``title`` and a ``text`` (or ``contents``). BEIR's ``corpus.jsonl`` is this.
- ``tsv``: ``id<TAB>text`` (MS MARCO ``collection.tsv``) or ``id<TAB>title<TAB>text``.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from nestrank.checks import check_iterable, check_path
from nestrank.data.document import Document
from nestrank.data.lines import decode_line, one_line, parse_json_object
from nestrank.errors import ArgumentTypeError, DataFormatError, UnknownIdError
from nestrank.files import atomic_write

ID_KEYS = ("_id", "id", "docid", "doc_id")
TEXT_KEYS = ("text", "contents")
OnEmpty = Literal["error", "skip"]
CORPUS_FORMATS = ("jsonl", "tsv")
#: What a corpus can be read from: the written formats and TREC SGML collections.
READ_FORMATS = (*CORPUS_FORMATS, "trec")


def detect_format(path: Path) -> str:
    """Guess a file's format: ``jsonl`` or ``tsv`` from the suffix (``.jsonl``/``.json``, ``.tsv``); ``trec``
    (SGML) for a directory, a ``.sgml``/``.trec``/``.gz`` file or another existing file (``.txt``, no suffix)
    whose first line starts with ``<``; ``tsv`` for other ``.txt`` files."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".sgml", ".trec", ".gz", ".z"):
        return "trec"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if path.is_file() and _first_line(path).startswith(b"<"):
        return "trec"
    if suffix == ".txt":
        return "tsv"
    raise DataFormatError(path, None, f"cannot tell the format of a {suffix or 'suffix-less'} file",
                          "name it .jsonl or .tsv, or pass the format explicitly")


def _first_line(path: Path) -> bytes:
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                return raw.lstrip(b"\xef\xbb\xbf").strip()
    return b""


def parse_document(raw: bytes, fmt: str, path: Path | str | None, line_no: int) -> Document | None:
    """Parse one corpus line; ``None`` for a blank line. Raises :class:`DataFormatError`."""
    line = decode_line(raw, path, line_no)
    if not line.strip():
        return None
    if fmt == "jsonl":
        obj = parse_json_object(line, path, line_no)
        doc_id = next((obj[k] for k in ID_KEYS if k in obj), None)
        if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
            raise DataFormatError(path, line_no, f"missing or non-string document id (one of {', '.join(ID_KEYS)})",
                                  'give every line an id, e.g. {"_id": "d1", "title": "", "text": "..."}')
        text = next((obj[k] for k in TEXT_KEYS if k in obj), None)
        if text is None:
            raise DataFormatError(path, line_no, f"document {doc_id!r} has no 'text' field",
                                  "add a 'text' (or 'contents') field")
        title = obj.get("title")
        title = "" if title is None else title
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataFormatError(path, line_no, f"document {doc_id!r}: title and text must be strings",
                                  "store title and text as JSON strings")
        return Document(str(doc_id), text, title)
    if fmt == "tsv":
        parts = line.split("\t")
        if len(parts) == 2:
            return Document(parts[0], parts[1])
        if len(parts) == 3:
            return Document(parts[0], parts[2], parts[1])
        raise DataFormatError(path, line_no, f"expected 2 or 3 tab-separated columns, got {len(parts)}",
                              "use 'id<TAB>text' or 'id<TAB>title<TAB>text' and no tabs inside text")
    raise DataFormatError(path, None, f"unknown corpus format {fmt!r}", f"use one of: {', '.join(CORPUS_FORMATS)}")


def write_corpus(path: str | Path, docs: Iterable[Document], fmt: str | None = None) -> int:
    """Write documents as JSONL (``_id``/``title``/``text``) or TSV, atomically; returns the count.

    TSV rows are ``id<TAB>text``, or ``id<TAB>title<TAB>text`` for documents with a title;
    tabs and newlines inside text become spaces.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in CORPUS_FORMATS:
        raise DataFormatError(path, None, f"unknown corpus format {fmt!r}", f"use one of: {', '.join(CORPUS_FORMATS)}")
    count = 0
    with atomic_write(path) as handle:
        for doc in docs:
            if fmt == "jsonl":
                handle.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")
            else:
                if not doc.id or any(c in doc.id for c in "\t\r\n"):
                    raise DataFormatError(path, None, f"cannot write document id {doc.id!r} to TSV (empty, or has "
                                          "a tab or newline)", "write JSONL instead, or fix the id")
                cells = [doc.id, one_line(doc.title), one_line(doc.text)] if doc.title else [doc.id, one_line(doc.text)]
                handle.write("\t".join(cells) + "\n")
            count += 1
    return count


class Corpus:
    """A collection of documents with random access by id and streaming iteration.

    Open a file with :meth:`open` (streamed, offsets only in memory) or wrap documents
    already in memory with :meth:`from_documents`.
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self.fmt: str = "memory"
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._offsets: np.ndarray | None = None
        self._docs: list[Document] | None = None
        self._line_numbers: np.ndarray | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, fmt: str | None = None, on_empty: OnEmpty = "error") -> Corpus:
        """Scan a corpus file once, validating every line and recording its byte offset.

        ``fmt`` is ``jsonl``, ``tsv`` or ``trec`` (default: :func:`detect_format`). A TREC SGML
        collection (a file, gzipped or not, or a directory of them; :mod:`nestrank.data.trec`)
        is read into memory; convert a large one to JSONL once (``nestrank data convert``) to
        stream it.

        ``on_empty="error"`` (default) rejects documents whose title and text are both
        empty; ``"skip"`` leaves them out.
        """
        path = Path(check_path(path, "path"))
        if not path.exists():
            raise DataFormatError(path, None, "corpus file not found",
                                  "check the path (a .jsonl or .tsv file, or a TREC collection)")
        fmt = fmt or detect_format(path)
        if fmt == "trec":  # multi-line SGML documents, maybe gzipped: read into memory
            from nestrank.data.trec import iter_trec_documents

            corpus = cls.from_documents(iter_trec_documents(path), on_empty)
            corpus.path, corpus.fmt = path, fmt
            if not corpus.ids:
                raise DataFormatError(path, None, "corpus has no documents (no <DOC>...</DOC>)",
                                      "give a TREC collection with at least one document")
            return corpus
        if not path.is_file():
            raise DataFormatError(path, None, f"a directory, but format {fmt!r} is read from one file",
                                  "point to the file, or use a TREC collection directory")
        corpus = cls()
        corpus.path, corpus.fmt = path, fmt
        offsets = array("q")  # compact while scanning: 8 bytes per document, not a Python int
        line_numbers = array("q")
        offset = 0
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                doc = parse_document(raw, corpus.fmt, path, line_no)
                if doc is not None and corpus._accept(doc, path, line_no, on_empty):
                    offsets.append(offset)
                    line_numbers.append(line_no)
                offset += len(raw)
        if not corpus._ids:
            raise DataFormatError(path, None, "corpus has no documents", "give a non-empty corpus file")
        corpus._offsets = np.frombuffer(offsets, dtype=np.int64)
        corpus._line_numbers = np.frombuffer(line_numbers, dtype=np.int64)
        return corpus

    @classmethod
    def from_documents(cls, docs: Iterable[Document], on_empty: OnEmpty = "error") -> Corpus:
        """An in-memory corpus from :class:`Document` objects."""
        check_iterable(docs, "docs", "nestrank.data.Document objects")
        corpus = cls()
        corpus._docs = []
        for position, doc in enumerate(docs, 1):
            if not isinstance(doc, Document):
                raise ArgumentTypeError(f"docs: item {position} is a {type(doc).__name__}, not a "
                                        "nestrank.data.Document (fix: Document(id, text, title))")
            if corpus._accept(doc, None, position, on_empty):
                corpus._docs.append(doc)
        return corpus

    def _accept(self, doc: Document, path: Path | None, line_no: int, on_empty: OnEmpty) -> bool:
        if not doc.id.strip():
            raise DataFormatError(path, line_no, "empty document id", "give every document a non-empty id")
        if doc.id in self._index:
            raise DataFormatError(path, line_no, f"duplicate document id {doc.id!r} (first seen at "
                                  f"{self._where(self._index[doc.id])})", "give every document a unique id")
        if not doc.full_text.strip():
            if on_empty == "skip":
                return False
            raise DataFormatError(path, line_no, f"document {doc.id!r} has empty title and text",
                                  "remove it, or open the corpus with on_empty='skip'")
        self._index[doc.id] = len(self._ids)
        self._ids.append(doc.id)
        return True

    def _where(self, position: int) -> str:
        if self._line_numbers is not None:
            return f"line {self._line_numbers[position]}"
        return f"entry {position + 1}"

    # -- access -------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """Document ids in file order."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._index

    def __iter__(self) -> Iterator[Document]:
        """Stream all documents in file order."""
        if self._docs is not None:
            yield from self._docs
            return
        assert self.path is not None
        with self.path.open("rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                doc = parse_document(raw, self.fmt, self.path, line_no)
                if doc is not None and doc.id in self._index:
                    yield doc

    def __getitem__(self, doc_id: str) -> Document:
        position = self._index.get(doc_id)
        if position is None:
            where = f" in {self.path}" if self.path else ""
            raise UnknownIdError(f"unknown document id {doc_id!r}{where}")
        return self.get_many([doc_id])[0]

    def get_many(self, doc_ids: Iterable[str]) -> list[Document]:
        """Fetch several documents by id (one open file handle for all)."""
        doc_ids = list(doc_ids)
        missing = [d for d in doc_ids if d not in self._index]
        if missing:
            where = f" in {self.path}" if self.path else ""
            raise UnknownIdError(f"unknown document id(s){where}: {', '.join(map(repr, missing[:5]))}")
        if self._docs is not None:
            return [self._docs[self._index[d]] for d in doc_ids]
        assert self.path is not None and self._offsets is not None and self._line_numbers is not None
        out = []
        with self.path.open("rb") as handle:
            for doc_id in doc_ids:
                position = self._index[doc_id]
                handle.seek(int(self._offsets[position]))
                doc = parse_document(handle.readline(), self.fmt, self.path, int(self._line_numbers[position]))
                if doc is None or doc.id != doc_id:
                    raise DataFormatError(self.path, int(self._line_numbers[position]),
                                          "file changed since it was opened", "open the corpus again")
                out.append(doc)
        return out

    def texts(self) -> Iterator[str]:
        """Stream ``title text`` of every document, in id order (for indexing)."""
        for doc in self:
            yield doc.full_text

    def __repr__(self) -> str:
        source = str(self.path) if self.path else "memory"
        return f"Corpus({len(self)} documents from {source})"

    def write(self, path: str | Path, fmt: str | None = None) -> int:
        """Write this corpus as JSONL or TSV (by ``fmt`` or the suffix), streaming; returns the count."""
        return write_corpus(path, self, fmt)
