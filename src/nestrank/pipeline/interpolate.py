"""Interpolating a reranker's scores with the first stage's, and choosing the weight on validation queries.

Over each query's top ``rerank_depth`` candidates the final score is
``weight * norm(reranker) + (1 - weight) * norm(first stage)`` (per-query min-max or z-score
normalisation, :func:`nestrank.retrieve.fusion.linear_fusion`); candidates below the reranking
depth keep their first-stage order below every reranked one. ``weight = 1`` is the reranker
alone. A small reranker that is only about as good as BM25 alone still adds a lot this way:
the two make different mistakes.
"""

from __future__ import annotations

from collections.abc import Sequence

from nestrank.data import Qrels, Run
from nestrank.errors import ConfigError

__all__ = ["WEIGHT_GRID", "choose_weight", "interpolate"]

#: Reranker weights tried by :func:`choose_weight` by default.
WEIGHT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def interpolate(first: Run, reranked: Run, weight: float, rerank_depth: int, norm: str = "minmax") -> Run:
    """``first``'s top ``rerank_depth`` rescored as ``weight * reranker + (1 - weight) * first stage``.

    ``reranked`` holds the reranker's score of each of those candidates (e.g. the run of
    :func:`nestrank.rerank.rerank_run` at the same or a larger depth). Documents below ``rerank_depth``
    keep their first-stage order below the head (synthetic scores ``min(head) - rank``).
    """
    from nestrank.retrieve.fusion import linear_fusion

    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"interpolation weight must lie in [0, 1], got {weight}")
    if rerank_depth < 1:
        raise ConfigError(f"rerank_depth must be at least 1, got {rerank_depth}")
    heads = first.top(rerank_depth)
    rescored = Run()
    for qid in heads:
        scores = dict(reranked.get(qid, []))
        missing = [doc for doc in heads.doc_ids(qid) if doc not in scores]
        if missing:
            raise ConfigError(f"query {qid!r}: the reranked run has no score for {len(missing)} of the first stage's "
                              f"top {rerank_depth}, e.g. {missing[0]!r} (fix: rerank at least that deep)")
        rescored.add(qid, ((doc, scores[doc]) for doc in heads.doc_ids(qid)))
    head = linear_fusion([heads, rescored], weights=[1.0 - weight, weight], norm=norm)  # type: ignore[arg-type]
    result = Run()
    for qid in first:
        items = head.get(qid, [])
        floor = min((score for _, score in items), default=0.0)
        tail = [(doc, floor - rank) for rank, doc in enumerate(first.doc_ids(qid)[rerank_depth:], 1)]
        result.add(qid, [*items, *tail])
    return result


def choose_weight(first: Run, reranked: Run, qrels: Qrels, rerank_depth: int, *,
                  weights: Sequence[float] = WEIGHT_GRID, metric: str = "nDCG@10", norm: str = "minmax"
                  ) -> tuple[float, dict[float, float]]:
    """The weight in ``weights`` whose interpolation scores best on ``qrels`` (ties: the smaller weight).

    Returns ``(weight, {weight: metric value})``. Use validation queries, never test ones.
    """
    from nestrank.evaluate import evaluate

    if not weights:
        raise ConfigError("choose_weight needs at least one weight to try")
    tried = {float(w): evaluate(interpolate(first, reranked, w, rerank_depth, norm), qrels, [metric])[metric]
             for w in weights}
    best = max(tried, key=lambda w: (tried[w], -w))
    return best, tried
