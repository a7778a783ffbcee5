"""Deterministic contrastive batches: which groups, which positive and negatives, per step.

Everything is a pure function of ``(seed, epoch, position)``, so a resumed run sees exactly
the batches an uninterrupted run would, and every process of a distributed run agrees on
the global batch and takes its own contiguous slice of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nestrank.data.corpus import Document
from nestrank.data.groups import TrainingGroup
from nestrank.errors import ConfigError


@dataclass(frozen=True)
class ContrastiveBatch:
    """One process's share of a contrastive batch: ``queries[i]`` owns ``passages[i*G:(i+1)*G]`` (positive first).

    ``relevant`` (validation batches only): each query's judged positive ids, so a pooled validation
    never counts another judged positive of the query as a distractor.
    """

    queries: list[str]
    passages: list[Document]
    relevant: list[frozenset[str]] | None = None


def holdout(query_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of ``query_ids`` (rounded, by sorted id order) held out for validation."""
    ids = sorted(set(query_ids))
    count = round(len(ids) * fraction)
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:count]}


class GroupBatcher:
    """Cuts training groups into global contrastive batches of ``batch_size`` queries per epoch.

    Each epoch shuffles the groups with ``(seed, epoch)`` and drops the incomplete last
    batch. For each group in a batch, the positive is drawn from its positives and
    ``group_size - 1`` negatives from its negatives (without replacement; a group with too
    few negatives repeats them in a shuffled cycle), seeded by ``(seed, epoch, group)``.
    """

    def __init__(self, groups: Sequence[TrainingGroup], batch_size: int, group_size: int, seed: int) -> None:
        if len(groups) < batch_size:
            raise ConfigError(f"{len(groups)} training groups are fewer than one batch of {batch_size} queries "
                              "(fix: lower train.batch_size or mine more groups)")
        if group_size > 1:
            empty = [i for i, g in enumerate(groups) if not g.negatives]
            if empty:
                g = groups[empty[0]]
                raise ConfigError(f"{len(empty)} training group(s) have no negatives (first: query "
                                  f"{g.query_id or g.query[:40]!r}) but group_size is {group_size} "
                                  "(fix: mine negatives for them, drop them, or set data.group_size = 1)")
        self.groups, self.batch_size, self.group_size, self.seed = groups, batch_size, group_size, seed

    @property
    def batches_per_epoch(self) -> int:
        """Complete batches in one epoch."""
        return len(self.groups) // self.batch_size

    def batch(self, epoch: int, index: int, rank: int = 0, world_size: int = 1) -> ContrastiveBatch:
        """Batch ``index`` of ``epoch``, the slice of process ``rank`` among ``world_size``."""
        if self.batch_size % world_size:
            raise ConfigError(f"train.batch_size {self.batch_size} is not divisible by the {world_size} processes")
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
        per_rank = self.batch_size // world_size
        start = index * self.batch_size + rank * per_rank
        queries, passages = [], []
        for position in order[start:start + per_rank]:
            group = self.groups[int(position)]
            rng = np.random.default_rng([self.seed, epoch, int(position)])
            queries.append(group.query)
            passages.append(group.positives[int(rng.integers(len(group.positives)))])
            passages.extend(self._negatives(group.negatives, rng))
        return ContrastiveBatch(queries, passages)

    def _negatives(self, negatives: list[Document], rng: np.random.Generator) -> list[Document]:
        need = self.group_size - 1
        picked: list[Document] = []
        while len(picked) < need:
            order = rng.permutation(len(negatives))
            picked.extend(negatives[int(i)] for i in order[:need - len(picked)])
        return picked
