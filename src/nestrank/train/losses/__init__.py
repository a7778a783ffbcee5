"""Training losses, one module per family.

- :mod:`~nestrank.train.losses.contrastive`: InfoNCE over in-batch and hard negatives (the retriever);
- :mod:`~nestrank.train.losses.group`: cross-entropy over a query's group of candidates (the rerankers);
- :mod:`~nestrank.train.losses.distillation`: cascaded self-distillation (the Matryoshka reranker, Eq. 9).
"""

from nestrank.train.losses.contrastive import gather_with_grad, info_nce, world_size
from nestrank.train.losses.distillation import (
    DistillationLoss,
    StudentScores,
    cascaded_self_distillation,
    distillation_kl,
)
from nestrank.train.losses.group import group_cross_entropy

__all__ = [
    "DistillationLoss",
    "StudentScores",
    "cascaded_self_distillation",
    "distillation_kl",
    "gather_with_grad",
    "group_cross_entropy",
    "info_nce",
    "world_size",
]
