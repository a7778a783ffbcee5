"""What one pipeline stage did: its wall time, the queries and pairs it handled, and its relative FLOPs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StageStats"]


@dataclass
class StageStats:
    """What one stage did: wall time, queries, pairs scored and (reranker) FLOPs relative to the full model."""

    name: str
    seconds: float
    queries: int
    pairs: int = 0
    flops_ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
