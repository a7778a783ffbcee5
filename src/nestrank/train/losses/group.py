"""The reranker's group loss: cross-entropy of each query's group of candidates (positive first).

Layout: scores of one batch are ``(B, G)``, query ``i``'s group of ``G`` candidates in row
``i`` with the positive in column 0 and ``G - 1`` hard negatives after it (RankLLaMA's
recipe: no in-batch negatives, since a cross-encoder scores each pair separately).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["check_group_scores", "group_cross_entropy"]


def check_group_scores(name: str, scores: torch.Tensor) -> None:
    """Raise :class:`ValueError` (naming ``name``) unless ``scores`` is a ``(B, G)`` table with ``G >= 2``."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"{name}: expected group scores (B, G) with G >= 2, got shape {tuple(scores.shape)}")


def group_cross_entropy(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over queries of ``-log softmax(scores / temperature)[:, 0]`` (positive in column 0), in fp32."""
    import torch
    import torch.nn.functional as F

    check_group_scores("group_cross_entropy", scores)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float() / temperature, target)
