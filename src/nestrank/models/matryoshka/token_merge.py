"""Importance-aware token merging for the Matryoshka reranker.

Two steps, kept apart so each can be tested by hand:

1. :func:`plan_merges` (pure numpy, one passage): given the importance of each passage
   token (the last token's attention to it), a group size k and a target length T, choose
   which tokens merge. The passage of length P is cut into ``ceil(P / k)`` groups of k
   consecutive tokens (the last group holds the remainder). Groups are merged in order of
   increasing total importance until the passage has exactly T tokens; a group whose full
   merge would overshoot merges only its first ``e + 1`` tokens (e = reduction still
   needed). Groups of one token are never picked. Merging every group reaches
   ``ceil(P / k)``, so any ``T >= ceil(P / k)`` is reached exactly; the reranker picks
   ``k = ceil(P / T)``, which guarantees that.
2. :func:`merge_rows` (torch, a whole left-padded batch): rebuild the batch from the plans.
   A merged token's state is the importance-weighted sum of its group's states, weights
   renormalised within the group (uniform when the group's importance sums to zero); its
   position id is the position of the group's first token. Tokens outside merged groups,
   and every query/prompt token, are copied unchanged with their positions. Rows shrink by
   different amounts, so the batch is re-packed, left-padded to the new longest row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["RowLayout", "plan_merges", "merge_rows", "segment_ids"]


def plan_merges(importance: np.ndarray, k: int, target: int) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` (end exclusive, passage-relative) that each merge into one token.

    ``importance`` holds one non-negative value per passage token. The result is sorted by
    start; merging the spans leaves exactly ``target`` tokens. Raises ``ValueError`` when
    ``target`` cannot be reached with groups of ``k`` (``target < ceil(P / k)``).
    """
    length = len(importance)
    if target >= length:
        return []
    if k < 2:
        raise ValueError(f"group size must be >= 2 to shrink {length} tokens to {target}")
    groups = [(start, min(start + k, length)) for start in range(0, length, k)]
    if target < len(groups):
        raise ValueError(f"cannot shrink {length} tokens to {target} with groups of {k} (minimum {len(groups)})")
    totals = np.add.reduceat(np.asarray(importance, dtype=np.float64), [start for start, _ in groups])
    needed = length - target
    spans = []
    for index in np.argsort(totals, kind="stable"):
        if needed == 0:
            break
        start, end = groups[index]
        if end - start < 2:
            continue
        size = min(end - start, needed + 1)
        spans.append((start, start + size))
        needed -= size - 1
    return sorted(spans)


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Where the passage sits in one row of a left-padded batch: ``start`` and ``length``
    counted in real tokens (padding excluded), plus the row's real token count ``total``."""

    start: int
    length: int
    total: int


def segment_ids(layout: RowLayout, spans: list[tuple[int, int]]) -> np.ndarray:
    """For each real token of a row, the index of the token it becomes after merging."""
    new_index = np.arange(layout.total)
    shift = np.zeros(layout.total, dtype=np.int64)
    for start, end in spans:
        first = layout.start + start
        new_index[first:first + (end - start)] = first
        shift[first + (end - start):] += end - start - 1
    # Tokens inside a span point at the span's first token; everything after shifts left.
    return new_index - shift


def merge_rows(
    hidden: torch.Tensor,
    positions: torch.Tensor,
    layouts: list[RowLayout],
    plans: list[list[tuple[int, int]]],
    importance: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor, list[RowLayout]]:
    """Apply merge plans to a left-padded batch; returns new ``(hidden, positions, layouts)``.

    ``hidden`` is ``(B, L, D)``, ``positions`` ``(B, L)``, both left-padded (row b's real
    tokens are the last ``layouts[b].total``). ``importance`` is ``(B, L)`` on the CPU, the
    last token's attention over the padded row. The sums run in float32 and are cast back.
    """
    import torch

    batch, width, dim = hidden.shape
    new_totals = [layout.total - sum(end - start - 1 for start, end in plan) for layout, plan in zip(layouts, plans, strict=True)]
    new_width = max(new_totals)
    sources, targets, weights, firsts = [], [], [], []
    for row, (layout, plan, new_total) in enumerate(zip(layouts, plans, new_totals, strict=True)):
        pad, new_pad = width - layout.total, new_width - new_total
        row_weights = np.ones(layout.total, dtype=np.float64)
        row_importance = importance[row, pad:]
        for start, end in plan:
            lo, hi = layout.start + start, layout.start + end
            group = row_importance[lo:hi].astype(np.float64)
            total = group.sum()
            row_weights[lo:hi] = group / total if total > 0 else 1.0 / (hi - lo)
        sources.append(row * width + pad + np.arange(layout.total))
        segments = segment_ids(layout, plan)
        targets.append(row * new_width + new_pad + segments)
        weights.append(row_weights)
        firsts.append(np.r_[True, segments[1:] != segments[:-1]])
    device = hidden.device
    source = torch.from_numpy(np.concatenate(sources)).to(device)
    target = torch.from_numpy(np.concatenate(targets)).to(device)
    weight = torch.from_numpy(np.concatenate(weights)).to(device=device, dtype=torch.float32)
    flat = hidden.reshape(batch * width, dim).index_select(0, source).float() * weight[:, None]
    merged = torch.zeros(batch * new_width, dim, device=device, dtype=torch.float32).index_add_(0, target, flat)
    # A merged token keeps its group's first position; padding gets position 0.
    first = torch.from_numpy(np.concatenate(firsts)).to(device)
    new_positions = torch.zeros(batch * new_width, dtype=positions.dtype, device=device)
    new_positions.index_copy_(0, target[first], positions.reshape(-1).index_select(0, source[first]))
    new_layouts = [
        RowLayout(layout.start, layout.length - sum(end - start - 1 for start, end in plan), new_total)
        for layout, plan, new_total in zip(layouts, plans, new_totals, strict=True)
    ]
    return (merged.to(hidden.dtype).reshape(batch, new_width, dim),
            new_positions.reshape(batch, new_width), new_layouts)
