"""Validation during training: held-out groups scored every ``train.eval_every`` steps, the best step kept.

The held-out queries are the ``data.validation_fraction`` of the training groups that the
trainer never trains on (``validation_queries.txt``). :func:`validation_batch` takes the first
``train.eval_queries`` of them by query id, each with its first positive and its first
``eval_group_size - 1`` negatives (the mined order, so every evaluation of a run, and every
run on the same groups, scores the same pairs). A trainer scores them
(:meth:`~nestrank.train.loop.Trainer.validation_scores`); :func:`group_mrr` is the mean
reciprocal rank of the positive in its group (ties count against it). With ``train.eval_pool``
a retriever ranks each positive among every distinct passage of the batch instead
(:func:`pool_table`: its own mined negatives and every other held-out query's passages, a few
hundred, so closer to retrieval over a corpus than 7 mined negatives, at no extra encoding). The loop logs the
figures (one record per validation in ``validation_log.jsonl``) and writes the best step's
checkpoint to ``best/`` with ``best/validation.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nestrank.data.groups import TrainingGroup
from nestrank.errors import ConfigError
from nestrank.train.batches import ContrastiveBatch
from nestrank.train.config import TrainConfig

__all__ = ["BEST_DIR", "BEST_FILE", "best_so_far", "group_mrr", "pool_table", "validation_batch"]

BEST_DIR = "best"
BEST_FILE = "validation.json"


def validation_batch(config: TrainConfig, held: Sequence[TrainingGroup]) -> ContrastiveBatch:
    """The held-out pairs a run validates on (see the module doc): ``eval_group_size`` passages per query, positive first."""
    t = config.train
    size = t.eval_group_size or config.data.group_size
    chosen = sorted(held, key=lambda g: str(g.query_id))[:t.eval_queries or None]
    usable = [g for g in chosen if g.positives and len(g.negatives) >= size - 1]
    if not usable:
        raise ConfigError(f"train.eval_every: none of the {len(chosen)} held-out groups has a positive and "
                          f"{size - 1} negatives (fix: lower train.eval_group_size or mine more negatives)")
    return ContrastiveBatch([g.query for g in usable],
                            [p for g in usable for p in [g.positives[0], *g.negatives[:size - 1]]],
                            [frozenset(p.id for p in g.positives) for g in usable])


def group_mrr(scores: np.ndarray) -> float:
    """Mean over rows of ``1 / rank`` of column 0 (the positive) in ``(queries, group)`` scores; ties rank it lower."""
    scores = np.asarray(scores, dtype=np.float64)
    ranks = 1 + (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
    return float(np.mean(1.0 / ranks))


def pool_table(queries: np.ndarray, passages: np.ndarray, batch: ContrastiveBatch) -> np.ndarray:
    """``(queries, pool)`` similarities for :func:`group_mrr`: column 0 a query's positive, then every other
    distinct passage id of ``batch`` (``passages``: one vector per ``batch.passages`` entry).

    A query's other judged positives (``batch.relevant``) are not distractors: their cells are ``-inf``.
    """
    size = len(batch.passages) // len(batch.queries)
    first: dict[str, int] = {}  # passage id -> its first row in ``passages``, in batch order
    for i, doc in enumerate(batch.passages):
        first.setdefault(doc.id, i)
    ids = list(first)
    scores = queries @ passages[list(first.values())].T
    relevant = batch.relevant or [frozenset() for _ in batch.queries]
    table = np.full((len(batch.queries), len(ids)), -np.inf, dtype=np.float64)
    for q, judged in enumerate(relevant):
        own = ids.index(batch.passages[q * size].id)
        table[q, 0] = scores[q, own]
        others = [c for c, doc_id in enumerate(ids) if c != own and doc_id not in judged]
        table[q, 1:1 + len(others)] = scores[q, others]
    return table


def best_so_far(output_dir: Path, step: int) -> tuple[float, int] | None:
    """``(figure, step)`` of the ``best/`` checkpoint a resumed run had kept up to ``step`` (``None``: none)."""
    record = output_dir / BEST_DIR / BEST_FILE
    try:
        best = json.loads(record.read_text(encoding="utf-8"))
        return (float(best["mrr_mean"]), int(best["step"])) if int(best["step"]) <= step else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
