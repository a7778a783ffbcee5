"""``train_reranker``: the reranker trainer for ``reranker.kind``.

``matryoshka``: :class:`~nestrank.train.matryoshka.MatryoshkaTrainer`; ``pointwise``:
:class:`~nestrank.train.pointwise.PointwiseTrainer`. Both run the loop of
:class:`~nestrank.train.loop.RerankerTrainer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nestrank.train.matryoshka import MatryoshkaTrainer
from nestrank.train.pointwise import PointwiseTrainer

if TYPE_CHECKING:
    from nestrank.train.config import TrainConfig
    from nestrank.train.loop import TrainResult

__all__ = ["train_reranker"]


def train_reranker(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train the reranker ``config`` describes; returns the final checkpoint.

    :class:`MatryoshkaTrainer` for ``reranker.kind = "matryoshka"``, :class:`PointwiseTrainer`
    for ``"pointwise"``.
    """
    trainer = PointwiseTrainer if config.reranker.kind == "pointwise" else MatryoshkaTrainer
    return trainer(config, progress=progress).train()
