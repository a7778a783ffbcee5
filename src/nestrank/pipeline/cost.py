"""What reranking costs: analytic FLOPs of a run's pairs under a configuration, relative to the full model.

The pairs' token lengths come from the reranker's own tokenisation (truncation included),
so the ratio is exactly what the engine computes: the sum of
:meth:`~nestrank.models.matryoshka.MatryoshkaReranker.flops` over the pairs under the
configuration, over the same sum for the full model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nestrank.data.corpus import Document

if TYPE_CHECKING:
    from nestrank.data import Corpus, Run

__all__ = ["PairShapes", "flops_ratio", "pair_shapes", "pairs_flops", "run_pairs"]

#: ``(query tokens, passage tokens, other tokens) -> number of pairs``.
PairShapes = Counter[tuple[int, int, int]]


def run_pairs(run: Run, queries: Mapping[str, str], corpus: Corpus, rerank_depth: int | None = None
              ) -> list[tuple[str, Document]]:
    """The ``(query text, document)`` pairs reranking ``run`` scores: each query's top ``rerank_depth`` (default all)."""
    return [(queries[qid], doc) for qid in run for doc in corpus.get_many(run.doc_ids(qid, rerank_depth))]


def pair_shapes(reranker: Any, pairs: Iterable[tuple[str, Document | str]]) -> PairShapes:
    """How many ``(query, document)`` pairs have each token shape under ``reranker``'s truncation."""
    blank = reranker.encode("", "")
    other = len(blank.ids) - blank.passage_len  # template, prompt and special tokens
    shapes: PairShapes = Counter()
    for query, document in pairs:
        encoded = reranker.encode(query, document)
        shapes[(len(encoded.ids) - encoded.passage_len - other, encoded.passage_len, other)] += 1
    return shapes


def pairs_flops(reranker: Any, config: Any, shapes: PairShapes) -> tuple[float, float] | None:
    """Summed FLOPs of ``shapes`` under ``config`` and under the full model; ``None`` without a FLOPs model.

    Only the Matryoshka reranker changes cost with its configuration; other rerankers
    (pointwise) always run the full model and get ``None``.
    """
    if not hasattr(reranker, "flops") or not shapes:
        return None
    cost = sum(n * reranker.flops(config, *shape) for shape, n in shapes.items())
    full = sum(n * reranker.flops(None, *shape) for shape, n in shapes.items())
    return cost, full


def flops_ratio(reranker: Any, config: Any, shapes: PairShapes) -> float | None:
    """Summed FLOPs of ``shapes`` under ``config`` over the full model's (see :func:`pairs_flops`)."""
    sums = pairs_flops(reranker, config, shapes)
    return None if sums is None or not sums[1] else sums[0] / sums[1]

