"""Long documents for passage rerankers: MaxP, a document scores as its best overlapping segment.

A reranker reads at most ``max_passage_tokens`` of a document; the rest is cut. MaxP (the
RepLLaMA paper's document baseline, after Dai & Callan 2019) instead splits the text into
windows of that many tokens (minus the title, which every segment repeats), ``stride`` tokens
apart, scores every segment, and keeps each document's maximum. Segments are cut on the
reranker's own token boundaries (character offsets of its tokenizer), so no text is lost or
altered at a cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nestrank.data.corpus import Document
from nestrank.errors import ConfigError
from nestrank.models.reranker import Reranker

__all__ = ["MaxPReranker", "split_document"]


def split_document(document: Document, tokenizer: Any, max_tokens: int, stride: int) -> list[Document]:
    """``document`` as overlapping segments of at most ``max_tokens`` tokens (title included), ``stride`` apart.

    A document that fits is returned whole (one segment). Every segment keeps the document's
    id and title.
    """
    if max_tokens < 1 or stride < 1:
        raise ConfigError(f"max_tokens and stride must be >= 1, got {max_tokens} and {stride}")
    title_tokens = len(tokenizer(document.title, add_special_tokens=False)["input_ids"]) if document.title else 0
    window = max(1, max_tokens - title_tokens)
    offsets = tokenizer(document.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= window:
        return [document]
    segments = []
    for start in range(0, len(offsets), stride):
        end = min(start + window, len(offsets))
        text = document.text[offsets[start][0]:offsets[end - 1][1]]
        segments.append(Document(document.id, text, title=document.title))
        if end == len(offsets):
            break
    return segments


class MaxPReranker(Reranker):
    """Wraps a passage reranker so each document scores as its best segment (see the module docstring).

    Args:
        reranker: the passage reranker (Matryoshka or pointwise); its tokenizer cuts the segments.
        max_tokens: tokens per segment, title included (default: the reranker's ``max_passage_tokens``).
        stride: tokens between segment starts (default: half a segment, so segments overlap by half).

    Every other attribute (``profiles``, ``resolve_config``, ``flops``, ``num_layers``...) is the
    wrapped reranker's, so a MaxP reranker runs wherever the reranker does.
    """

    def __init__(self, reranker: Reranker, *, max_tokens: int | None = None, stride: int | None = None) -> None:
        self.reranker = reranker
        self.max_tokens = max_tokens or int(reranker.max_passage_tokens)  # type: ignore[attr-defined]
        self.stride = stride or max(1, self.max_tokens // 2)
        if self.max_tokens < 1 or self.stride < 1:
            raise ConfigError(f"maxp: max_tokens and stride must be >= 1, got {self.max_tokens} and {self.stride}")
        self.default_batch_tokens = reranker.default_batch_tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["reranker"], name)

    def segments(self, documents: Sequence[Document]) -> tuple[list[Document], np.ndarray]:
        """Every document's segments, and the index of the document each segment belongs to."""
        tokenizer = self.reranker.tokenizer  # type: ignore[attr-defined]
        pieces: list[Document] = []
        owner: list[int] = []
        for position, doc in enumerate(documents):
            split = split_document(doc, tokenizer, self.max_tokens, self.stride)
            pieces.extend(split)
            owner.extend([position] * len(split))
        return pieces, np.asarray(owner, dtype=np.int64)

    def score(self, queries: str | Sequence[str], documents: Sequence[Document | str], *, config: Any = None,
              batch_tokens: int | None = None, show_progress: bool = False) -> np.ndarray:
        """The best segment's score of each document (with several exits: per exit)."""
        query_list, docs = self.pairs(queries, documents)
        pieces, owner = self.segments(docs)
        scores = np.asarray(self.reranker.score([query_list[i] for i in owner], pieces, config=config,
                                                batch_tokens=batch_tokens, show_progress=show_progress))
        return _max_by_owner(scores, owner, len(docs))

    def score_exits(self, queries: str | Sequence[str], documents: Sequence[Document | str], exits: Sequence[int],
                    **kwargs: Any) -> dict[int, np.ndarray]:
        """:meth:`MatryoshkaReranker.score_exits` with each document scored as its best segment, per exit."""
        query_list, docs = self.pairs(queries, documents)
        pieces, owner = self.segments(docs)
        table = self.reranker.score_exits([query_list[i] for i in owner], pieces, exits,  # type: ignore[attr-defined]
                                          **kwargs)
        return {layer: _max_by_owner(np.asarray(scores), owner, len(docs)) for layer, scores in table.items()}


def _max_by_owner(scores: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    out = np.full((count, *scores.shape[1:]), -np.inf, dtype=np.float32)
    np.maximum.at(out, owner, scores.astype(np.float32))
    return out
