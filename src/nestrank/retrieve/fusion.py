"""Fusing several runs into one: reciprocal-rank fusion and normalised linear fusion.

Both take the union of the runs' queries and, per query, the union of their documents.
Ranks and scores are read from each :class:`~nestrank.data.Run` in its own ranking order
(score descending, ties by doc id descending), so fusion is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from nestrank.checks import check_int
from nestrank.data import Run
from nestrank.errors import ArgumentTypeError, ConfigError
from nestrank.retrieve.config import RRF_K

Normalisation = Literal["minmax", "zscore"]
FUSION_METHODS = ("rrf", "linear")


def _check_weights(runs: Sequence[Run], weights: Sequence[float] | None) -> list[float]:
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not all(isinstance(r, Run) for r in runs):
        raise ArgumentTypeError(f"runs must be a list of Runs, got {type(runs).__name__}"
                                + (" (fix: [run])" if isinstance(runs, Run) else ""))
    if not runs:
        raise ConfigError("fusion needs at least one run")
    if weights is None:
        return [1.0] * len(runs)
    weights = [float(w) for w in weights]
    if len(weights) != len(runs):
        raise ConfigError(f"got {len(weights)} fusion weight(s) for {len(runs)} run(s); give one weight per run")
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ConfigError(f"fusion weights must be finite, >= 0 and not all 0, got {weights}")
    return weights


def _check_k(k: int | None) -> None:
    if k is not None:
        check_int(k, "k", 1, "fused results kept per query")


def _query_ids(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run))
    return list(seen)


def reciprocal_rank_fusion(runs: Sequence[Run], *, rrf_k: float = RRF_K, weights: Sequence[float] | None = None,
                           k: int | None = None) -> Run:
    """Reciprocal-rank fusion (Cormack et al. 2009): ``score(d) = sum_i w_i / (rrf_k + rank_i(d))``.

    Ranks are 1-based; a document missing from a run adds nothing for that run. ``k``
    keeps only the top ``k`` fused documents per query (all when ``None``).
    """
    weights = _check_weights(runs, weights)
    _check_k(k)
    if not (math.isfinite(rrf_k) and rrf_k >= 0):  # an infinite constant would give every document a score of 0
        raise ConfigError(f"RRF k (the constant rrf_k) must be a finite number >= 0, got {rrf_k}")
    fused = Run()
    for qid in _query_ids(runs):
        scores: dict[str, float] = {}
        for run, weight in zip(runs, weights, strict=True):
            for rank, (doc, _) in enumerate(run.get(qid, ()), 1):
                scores[doc] = scores.get(doc, 0.0) + weight / (rrf_k + rank)
        fused.add(qid, scores.items())
    return fused if k is None else fused.top(k)


def _normalise(scores: list[float], norm: Normalisation) -> tuple[list[float], float]:
    """Normalised scores of one run for one query, and the value a missing document gets."""
    if norm == "minmax":
        low, high = min(scores), max(scores)
        if high == low:
            return [1.0] * len(scores), 0.0
        return [(s - low) / (high - low) for s in scores], 0.0
    if norm == "zscore":
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        if std == 0:
            return [0.0] * len(scores), 0.0
        normed = [(s - mean) / std for s in scores]
        return normed, min(normed)
    raise ConfigError(f"unknown score normalisation {norm!r}; choose 'minmax' or 'zscore'")


def linear_fusion(runs: Sequence[Run], weights: Sequence[float] | None = None, norm: Normalisation = "minmax",
                  *, k: int | None = None) -> Run:
    """Weighted sum of per-query normalised scores: ``score(d) = sum_i w_i * norm_i(d)``, cut to the top ``k``.

    ``norm="minmax"`` maps each run's scores for a query to [0, 1] (all 1.0 when they are
    equal); a document the run did not retrieve gets 0. ``norm="zscore"`` standardises them
    to mean 0 and unit variance (all 0.0 when they are equal); a missing document gets the
    run's lowest z-score for that query, so it is never ranked above a retrieved one.
    """
    weights = _check_weights(runs, weights)
    _check_k(k)
    if norm not in ("minmax", "zscore"):
        raise ConfigError(f"unknown score normalisation {norm!r}; choose 'minmax' or 'zscore'")
    fused = Run()
    for qid in _query_ids(runs):
        per_run: list[tuple[dict[str, float], float]] = []
        docs: dict[str, None] = {}
        for run in runs:
            items = run.get(qid, [])
            if not items:
                per_run.append(({}, 0.0))
                continue
            normed, missing = _normalise([score for _, score in items], norm)
            per_run.append((dict(zip([doc for doc, _ in items], normed, strict=True)), missing))
            docs.update(dict.fromkeys(doc for doc, _ in items))
        fused.add(qid, ((doc, sum(w * values.get(doc, missing) for w, (values, missing)
                                  in zip(weights, per_run, strict=True))) for doc in docs))
    return fused if k is None else fused.top(k)


def fuse(runs: Sequence[Run], method: str = "rrf", weights: Sequence[float] | None = None, *, rrf_k: float = RRF_K,
         norm: Normalisation = "minmax", k: int | None = None) -> Run:
    """Fuse ``runs`` with ``method`` ``"rrf"`` (:func:`reciprocal_rank_fusion`) or
    ``"linear"`` (:func:`linear_fusion`), keeping the top ``k`` per query (all when ``None``)."""
    if method == "rrf":
        return reciprocal_rank_fusion(runs, rrf_k=rrf_k, weights=weights, k=k)
    if method == "linear":
        return linear_fusion(runs, weights=weights, norm=norm, k=k)
    raise ConfigError(f"unknown fusion method {method!r}; choose one of: {', '.join(FUSION_METHODS)}")
