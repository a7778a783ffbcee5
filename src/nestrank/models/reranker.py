"""The reranker interface every cross-encoder implements (pointwise RankLLaMA, Matryoshka).

A :class:`Reranker` scores (query, document) pairs with :meth:`Reranker.score` and ranks
documents for one query with :meth:`Reranker.rank`. Subclasses implement ``score`` only;
:meth:`Reranker.pairs` normalises and validates its inputs so every engine rejects bad
input the same way.

``config`` is passed through untouched: the Matryoshka engine reads it as a depth/width
configuration, engines without run-time configurations reject anything but ``None``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nestrank.checks import check_int
from nestrank.data.corpus import Document
from nestrank.errors import ArgumentTypeError, ConfigError, NestrankError


class RerankInputError(NestrankError, ValueError):
    """Queries or documents given to a reranker are unusable (empty, mismatched, wrong type)."""


@dataclass(frozen=True, slots=True)
class RankedDocument:
    """One reranked document: its id, score, 1-based rank and the document itself."""

    doc_id: str
    score: float
    rank: int
    document: Document | str


class Reranker(ABC):
    """Base class of cross-encoder rerankers.

    Subclasses implement :meth:`score`; they should call :meth:`pairs` to validate and
    normalise its arguments. ``default_batch_tokens`` is the padded-token budget of one
    forward batch when the caller gives none (see :mod:`nestrank.models.batching`).
    """

    default_batch_tokens: int = 16384

    @abstractmethod
    def score(
        self,
        queries: str | Sequence[str],
        documents: Sequence[Document | str],
        *,
        config: Any = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Score documents against queries; a float32 array with one score per document.

        ``queries`` is one query for every document, or a sequence with one query per
        document (so pairs from many queries can share batches). Scores come back in input
        order, higher is more relevant. ``batch_tokens`` caps the padded tokens of one
        forward batch; ``show_progress`` shows a progress bar.
        """

    def rank(
        self,
        query: str,
        documents: Sequence[Document | str],
        *,
        config: Any = None,
        top_k: int | None = None,
    ) -> list[RankedDocument]:
        """Rank ``documents`` for ``query``, best first (ties keep input order).

        Ids are ``Document.id``, or the list position (``"0"``, ``"1"``, ...) for plain
        strings. ``top_k`` keeps only the best ``top_k`` results.
        """
        if not isinstance(query, str):
            raise RerankInputError(f"rank() takes one query string, got {type(query).__name__} "
                                   "(use score() with one query per document for several queries)")
        if top_k is not None:
            check_int(top_k, "top_k")
        if not isinstance(documents, str | Document):
            documents = list(documents)  # a generator would be consumed twice
        _, docs = self.pairs(query, documents)
        scores = np.asarray(self.score(query, documents, config=config), dtype=np.float64)
        if scores.shape != (len(docs),):
            raise ConfigError(f"{type(self).__name__}.score returned shape {scores.shape} for {len(docs)} documents "
                              "(rank() needs one score per document: request a single exit in config)")
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [
            RankedDocument(doc_id=docs[i].id, score=float(scores[i]), rank=rank, document=documents[i])
            for rank, i in enumerate(order.tolist(), 1)
        ]

    @staticmethod
    def pairs(queries: str | Sequence[str], documents: Sequence[Document | str]) -> tuple[list[str], list[Document]]:
        """Validate ``score`` arguments; returns one query string and one :class:`Document` per pair.

        Plain-string documents become ``Document(id=str(position), text=...)``. Raises
        :class:`RerankInputError` for no documents, an empty query or document, a query count
        that does not match the document count, or values of the wrong type.
        """
        if isinstance(documents, str | Document):
            raise RerankInputError("documents must be a sequence of documents, not a single one (wrap it in a list)")
        if isinstance(documents, Mapping) or not isinstance(documents, Iterable):
            raise ArgumentTypeError(f"documents must be a list of documents (str or nestrank.data.Document), got "
                                    f"{type(documents).__name__}")
        if not isinstance(queries, str) and (isinstance(queries, Mapping) or not isinstance(queries, Iterable)):
            raise ArgumentTypeError(f"queries must be one query string, or a list with one per document, got "
                                    f"{type(queries).__name__}")
        documents = list(documents)
        if not documents:
            raise RerankInputError("no documents to score (give at least one document)")
        docs: list[Document] = []
        for position, doc in enumerate(documents):
            if isinstance(doc, str):
                doc = Document(str(position), doc)
            elif not isinstance(doc, Document):
                raise RerankInputError(f"document at position {position} is a {type(doc).__name__}, "
                                       "expected a str or nestrank.data.Document")
            if not doc.full_text.strip():
                raise RerankInputError(f"document {doc.id!r} (position {position}) has empty title and text")
            docs.append(doc)
        query_list = [queries] * len(docs) if isinstance(queries, str) else list(queries)
        if len(query_list) != len(docs):
            raise RerankInputError(f"got {len(query_list)} queries for {len(docs)} documents "
                                   "(give one query for all documents, or exactly one per document)")
        for position, query in enumerate(query_list):
            if not isinstance(query, str):
                raise RerankInputError(f"query at position {position} is a {type(query).__name__}, expected a str")
            if not query.strip():
                raise RerankInputError(f"query at position {position} is empty (give a non-empty query text)")
        return query_list, docs

    def resolve_batch_tokens(self, batch_tokens: int | None) -> int:
        """``batch_tokens``, or this reranker's default when ``None``; must be positive."""
        value = self.default_batch_tokens if batch_tokens is None else batch_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        return value
