"""The pipeline's second stage: rerank the top candidates at a chosen cost, then interpolate.

The cost comes from a profile of the model (``profiles.json``: configuration, reranking
depth and interpolation weight chosen by ``nestrank tune``) or from explicit settings, which
win over the profile's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestrank.data import Corpus, Run
from nestrank.errors import ConfigError
from nestrank.pipeline.config import RerankerSection
from nestrank.pipeline.stats import StageStats
from nestrank.rerank import DEFAULT_RERANK_DEPTH

__all__ = ["RerankStage"]



@dataclass
class RerankStage:
    """A loaded reranker and the cost it runs at.

    Attributes:
        reranker: any :class:`~nestrank.models.Reranker`.
        config: the configuration passed to ``reranker.score`` (a string; ``None`` = full model).
        rerank_depth: candidates reranked per query.
        weight: the reranker's share in the interpolation with the first stage (1 = alone).
        norm: score normalisation of the interpolation.
        profile: the profile name the settings came from, if any.
        batch_tokens: padded tokens per forward batch (``None``: the reranker's default).
        journal: a file recording finished reranking work, so an interrupted :meth:`apply`
            resumes (``rerank_run(journal=...)``); ``None``: none.
    """

    reranker: Any
    config: str | None = None
    rerank_depth: int = DEFAULT_RERANK_DEPTH
    weight: float = 1.0
    norm: str = "minmax"
    profile: str | None = None
    batch_tokens: int | None = None
    journal: Path | None = None

    @classmethod
    def load(cls, section: RerankerSection, reranker: Any = None) -> RerankStage:
        """Load ``section.model`` (unless ``reranker`` is given) and resolve its profile and settings."""
        if reranker is None:
            from nestrank.rerank import load_reranker

            if section.model is None:
                raise ConfigError("reranker.model is not set")
            reranker = load_reranker(section.model, device=section.device, dtype=section.dtype)
        return cls.from_reranker(reranker, section)

    @classmethod
    def from_reranker(cls, reranker: Any, section: RerankerSection) -> RerankStage:
        """The stage for a loaded ``reranker`` under ``section``'s settings (explicit values win over the profile's)."""
        profiles = getattr(reranker, "profiles", {})
        profile = None
        if section.profile is not None:
            if section.profile not in profiles:
                known = ", ".join(sorted(profiles)) or "none (it is not a Matryoshka reranker)"
                raise ConfigError(f"reranker.profile {section.profile!r} is not a profile of {section.model}; it has "
                                  f"{known}")
            profile = profiles[section.profile]
        config = section.config if section.config is not None else (profile.config if profile else None)
        if config is not None and hasattr(reranker, "resolve_config"):
            reranker.resolve_config(config).validate(reranker.num_layers)
        depth = section.rerank_depth or (profile.rerank_depth if profile else None) or DEFAULT_RERANK_DEPTH
        weight = section.weight if section.weight is not None else (
            profile.weight if profile is not None and profile.weight is not None else 1.0)
        if section.doc_mode == "maxp":
            from nestrank.models.maxp import MaxPReranker

            reranker = MaxPReranker(reranker, stride=section.stride)
        return cls(reranker, config or None, depth, weight, section.norm, section.profile, section.batch_tokens)

    def apply(self, candidates: Run, queries: Mapping[str, str], corpus: Corpus, *, show_progress: bool = False
              ) -> tuple[Run, StageStats]:
        """Rerank ``candidates`` and interpolate; returns the run and the stage's :class:`StageStats`."""
        from nestrank.pipeline.cost import pair_shapes, pairs_flops, run_pairs
        from nestrank.pipeline.interpolate import interpolate
        from nestrank.rerank import rerank_run

        clock = time.perf_counter()
        reranked = rerank_run(candidates, queries, corpus, self.reranker, rerank_depth=self.rerank_depth, config=self.config,
                              batch_tokens=self.batch_tokens, show_progress=show_progress, journal=self.journal)
        seconds = time.perf_counter() - clock
        run = reranked if self.weight == 1.0 else interpolate(candidates, reranked, self.weight, self.rerank_depth,
                                                              self.norm)
        pairs = run_pairs(candidates, queries, corpus, self.rerank_depth)
        sums = pairs_flops(self.reranker, self.config, pair_shapes(self.reranker, pairs)) \
            if hasattr(self.reranker, "flops") else None
        ratio = sums[0] / sums[1] if sums and sums[1] else None
        from nestrank.models.maxp import MaxPReranker

        details = {"profile": self.profile, "config": self.config or "full", "rerank_depth": self.rerank_depth,
                   "weight": self.weight, "norm": self.norm,
                   "doc_mode": "maxp" if isinstance(self.reranker, MaxPReranker) else "truncate",
                   "flops": sums[0] if sums else None, "full_flops": sums[1] if sums else None}
        return run, StageStats("rerank", seconds, len(candidates), len(pairs), ratio, details)
