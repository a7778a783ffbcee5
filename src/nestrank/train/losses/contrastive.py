"""The retriever's contrastive loss (InfoNCE with in-batch negatives), and gathering embeddings across processes.

Layout of a contrastive batch: ``q`` holds ``B`` query embeddings; ``p`` holds ``B * G``
passage embeddings, the ``G`` passages of query ``i`` at rows ``i*G .. i*G+G-1`` with the
positive first. Every query is scored against *every* passage of the batch, so the other
queries' positives and hard negatives serve as in-batch negatives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def info_nce(q: torch.Tensor, p: torch.Tensor, group_size: int, temperature: float = 0.01) -> torch.Tensor:
    """Mean InfoNCE loss of ``q`` against all passages ``p`` (positive of query ``i`` at row ``i * group_size``).

    ``loss = mean_i -log softmax(q_i . p / temperature)[i * group_size]``, computed in fp32.
    """
    import torch
    import torch.nn.functional as F

    if q.dim() != 2 or p.dim() != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"expected q [B, d] and p [B*G, d], got {tuple(q.shape)} and {tuple(p.shape)}")
    if p.shape[0] != q.shape[0] * group_size:
        raise ValueError(f"{p.shape[0]} passages for {q.shape[0]} queries with group_size {group_size}; "
                         f"expected {q.shape[0] * group_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scores = q.float() @ p.float().T / temperature
    target = torch.arange(q.shape[0], device=q.device) * group_size
    return F.cross_entropy(scores, target)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (rank order); only this rank's slice keeps its gradient.

    Without an initialised process group (or with one process) ``x`` is returned as is.
    Every rank must pass a tensor of the same shape. Each rank then computes the same
    global loss; its gradient reaches only the local embeddings, so the per-rank parameter
    gradients *sum* to the full-batch gradient. DDP averages them, so multiply the loss by
    the world size (:func:`world_size`) before ``backward``.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def world_size() -> int:
    """Number of processes of the initialised process group (1 when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
