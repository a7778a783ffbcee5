"""Resumable reranking: a journal of the scores of finished chunks (``rerank_run(..., journal=PATH)``).

:func:`nestrank.rerank.rerank_run` scores its queries in chunks of about ``pairs_per_call``
pairs. With a journal, each finished chunk's scores are appended to a file (one JSON line,
flushed and fsynced) before the next chunk starts; a later call with the same journal takes
finished chunks from it and scores only the others. Chunks are cut the same way every time,
so every pair is scored in the same batch as in an uninterrupted call and the result is
identical.

The file is JSON lines: a header ``{"journal": "nestrank-rerank", "version": 1,
"fingerprint": HEX}`` and one ``{"inputs": HEX, "scores": [[...], ...]}`` per chunk. The
fingerprint covers what scores depend on besides the pairs: the reranker (its class, settings
and a sample of every weight tensor, :func:`reranker_fingerprint`), the configuration, the
batch budget and the chunk plan (query and document ids). A journal with another fingerprint
is started over. ``inputs`` hashes the chunk's query and document texts, so a chunk whose
texts changed under the same ids is scored again. A line cut short by a kill is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nestrank.data.corpus import Document
from nestrank.errors import ConfigError
from nestrank.models.reranker import Reranker

__all__ = ["ScoreJournal", "chunk_inputs", "journal_path", "reranker_fingerprint"]

MAGIC = "nestrank-rerank"
VERSION = 1
#: Values sampled per weight tensor for the fingerprint (evenly strided; small tensors are hashed whole).
SAMPLE = 4096


def journal_path(out: str | Path) -> Path:
    """Where the command line keeps the journal of a reranked run written to ``out``: ``.NAME.journal`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.journal")


def reranker_fingerprint(reranker: Any) -> str:
    """A hash of what a reranker's scores depend on, without scoring anything.

    Covers the class, every plain setting (numbers, strings), the rerankers and nestrank objects
    it holds (a wrapped reranker, the pair format, profiles) and, for every torch module or
    tensor, each tensor's name, shape, dtype and up to :data:`SAMPLE` evenly strided values.
    Private attributes (``_name``: caches, counters) and other objects (a tokenizer) are left out.
    """
    digest = hashlib.sha256()
    _feed(digest, reranker, "reranker", set())
    return digest.hexdigest()


def _feed(digest: Any, value: Any, name: str, seen: set[int]) -> None:
    if value is None or isinstance(value, str | int | float | bool):
        digest.update(f"{name}={value!r};".encode())
        return
    if id(value) in seen:
        return
    seen.add(id(value))
    if hasattr(value, "state_dict") and hasattr(value, "named_parameters"):  # a torch module
        for key, tensor in value.state_dict().items():
            _feed_tensor(digest, f"{name}.{key}", tensor)
    elif hasattr(value, "detach") and hasattr(value, "shape"):  # a tensor
        _feed_tensor(digest, name, value)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _feed(digest, value[key], f"{name}[{key}]", seen)
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _feed(digest, item, f"{name}[{position}]", seen)
    elif hasattr(value, "__dict__") and (isinstance(value, Reranker) or type(value).__module__.startswith("nestrank.")):
        digest.update(f"{name}:{type(value).__module__}.{type(value).__qualname__};".encode())
        for key, item in sorted(vars(value).items()):
            if not key.startswith("_"):  # private attributes hold run-time state (caches, counters), not settings
                _feed(digest, item, f"{name}.{key}", seen)


def _feed_tensor(digest: Any, name: str, tensor: Any) -> None:
    import torch

    flat = tensor.detach().reshape(-1)
    sample = flat[::max(1, flat.numel() // SAMPLE)][:SAMPLE].to("cpu", torch.float64)
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    digest.update(sample.numpy().tobytes())


def chunk_inputs(queries: Sequence[str], docs: Sequence[Document]) -> str:
    """A hash of one chunk's pairs: every query text and document id, title and text, in order."""
    digest = hashlib.sha256()
    for query, doc in zip(queries, docs, strict=True):
        digest.update(json.dumps([query, doc.id, doc.title, doc.text]).encode())
    return digest.hexdigest()


class ScoreJournal:
    """An append-only file of finished chunks' scores, valid for one ``fingerprint``.

    Opening reads the finished chunks when the file's fingerprint matches, else starts the
    file over. :meth:`add` appends one chunk durably.
    """

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.chunks: dict[str, list[list[float]]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._load():
            self._start()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open until close())

    def _load(self) -> bool:
        """Read a journal of this fingerprint (dropping a line cut short); ``False`` when there is none."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigError(f"cannot read the rerank journal {self.path}: {exc} (fix: delete it to start "
                              "over)") from None
        lines = data.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        try:
            header = json.loads(complete[0]) if complete else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("journal") != MAGIC or \
                header.get("version") != VERSION or header.get("fingerprint") != self.fingerprint:
            return False
        for line in complete[1:]:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                record = json.loads(line)
                self.chunks[str(record["inputs"])] = [[float(s) for s in scores] for scores in record["scores"]]
        if torn:
            with open(self.path, "r+b") as handle:
                handle.truncate(len(data) - len(torn))
        return True

    def _start(self) -> None:
        from nestrank.files import atomic_write

        with atomic_write(self.path) as handle:
            handle.write(json.dumps({"journal": MAGIC, "version": VERSION, "fingerprint": self.fingerprint}) + "\n")

    def get(self, inputs: str) -> list[list[float]] | None:
        """The score lists of the chunk whose pairs hash to ``inputs``, or ``None`` when it is not finished."""
        return self.chunks.get(inputs)

    def add(self, inputs: str, scores: Iterable[Sequence[float]]) -> None:
        """Record a finished chunk: one line, flushed and fsynced before returning."""
        lists = [[float(s) for s in column] for column in scores]
        self._handle.write(json.dumps({"inputs": inputs, "scores": lists}) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.chunks[inputs] = lists

    def close(self) -> None:
        """Close the file (it stays on disk: delete it once the results are saved)."""
        self._handle.close()

    def __enter__(self) -> ScoreJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
