"""What a pipeline runs: first stage, candidate depth, reranker and interpolation, from TOML or Python.

A pipeline file has up to three sections; every key is optional::

    [data]
    dataset = "../shared/data/scifact"   # BEIR directory or name (a command's --dataset wins)

    [first_stage]
    method = "hybrid"            # bm25 | dense | hybrid
    index = "out/scifact.hybrid" # index directory; built there from the corpus when missing
    encoder = "minilm-l6"        # dense/hybrid: the encoder (queries; the corpus when building)
    fusion = "rrf"               # hybrid: rrf | linear
    rrf_k = 60.0                 # hybrid rrf constant
    weights = [0.5, 0.5]         # hybrid: [bm25, dense] weights
    norm = "minmax"              # hybrid linear: minmax | zscore
    fusion_depth = 1000          # hybrid: results per sub-index fused per query
    k = 100                      # candidates kept per query
    doc_mode = "truncate"        # dense/hybrid, long documents: truncate | maxp (a vector per segment,
                                 # a document scores as its best); must match the index's
    stride = 64                  # maxp: tokens between segment starts (default: half a passage)
    passage_tokens = 128         # encoder passage length when building the index (default: the encoder's)

    [reranker]
    model = "smollm2-135m-scifact"  # preset, checkpoint directory (none: no reranking)
    profile = "light"            # a profile of the model (profiles.json), or
    config = "depth=15,compress=8:0.5"  # a configuration string (not both)
    rerank_depth = 20            # candidates reranked (default: the profile's, else 100)
    weight = 0.6                 # reranker share when interpolating with the first stage (default:
                                 # the profile's, else 1.0 = the reranker alone)
    norm = "minmax"              # score normalisation for the interpolation: minmax | zscore
    doc_mode = "truncate"        # long documents: truncate | maxp (best segment)
    stride = 64                  # maxp: tokens between segment starts (default: half a passage)
    batch_tokens = 8192          # padded tokens per forward batch
    dtype = "auto"               # auto | float32 | bfloat16 | float16
    device = "cpu"               # default: CUDA when available

Relative paths are taken relative to the current directory. :func:`load_pipeline_config`
reads a file; :class:`PipelineConfig` can also be built in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestrank.errors import ConfigError
from nestrank.tomlconfig import build_sections, read_toml

__all__ = ["DataSection", "FirstStageSection", "PipelineConfig", "RerankerSection", "load_pipeline_config"]

FIRST_STAGES = ("bm25", "dense", "hybrid")
FUSIONS = ("rrf", "linear")
NORMS = ("minmax", "zscore")
DOC_MODES = ("truncate", "maxp")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class DataSection:
    """Where the documents come from when a command does not say (``--dataset`` wins)."""

    dataset: str | None = None


@dataclass
class FirstStageSection:
    """The candidate generator: BM25, a dense index or both fused (see the module docstring)."""

    method: str = "bm25"
    index: str | None = None
    encoder: str | None = None
    fusion: str = "rrf"
    rrf_k: float = 60.0
    weights: list[float] | None = None
    norm: str = "minmax"
    fusion_depth: int = 1000
    k: int = 100
    doc_mode: str = "truncate"
    stride: int | None = None
    passage_tokens: int | None = None

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where`` and the key on a bad value."""
        _one_of(self.method, FIRST_STAGES, "first_stage.method", where)
        _one_of(self.fusion, FUSIONS, "first_stage.fusion", where)
        _one_of(self.norm, NORMS, "first_stage.norm", where)
        _one_of(self.doc_mode, DOC_MODES, "first_stage.doc_mode", where)
        if self.method != "bm25" and self.index is None:
            raise ConfigError(f"{where}: first_stage.method = {self.method!r} needs first_stage.index (a directory "
                              f"from `nestrank index --method {self.method}`, or one to build with first_stage.encoder)")
        _positive(self.k, "first_stage.k", where)
        _positive(self.fusion_depth, "first_stage.fusion_depth", where)
        for key in ("stride", "passage_tokens"):
            if getattr(self, key) is not None:
                _positive(getattr(self, key), f"first_stage.{key}", where)
        if self.stride is not None and self.doc_mode != "maxp":
            raise ConfigError(f"{where}: first_stage.stride applies to doc_mode = \"maxp\" only (fix: set doc_mode "
                              "= \"maxp\" or drop stride)")
        if not (math.isfinite(self.rrf_k) and self.rrf_k >= 0):
            raise ConfigError(f"{where}: first_stage.rrf_k must be a finite number >= 0, got {self.rrf_k}")
        if self.weights is not None and (len(self.weights) != 2 or not all(math.isfinite(w) and w >= 0
                                                                           for w in self.weights)):
            raise ConfigError(f"{where}: first_stage.weights must be two finite non-negative numbers [bm25, dense], "
                              f"got {self.weights}")


@dataclass
class RerankerSection:
    """The second stage: which model, at which cost, over how many candidates, mixed how."""

    model: str | None = None
    profile: str | None = None
    config: str | None = None
    rerank_depth: int | None = None
    weight: float | None = None
    norm: str = "minmax"
    doc_mode: str = "truncate"
    stride: int | None = None
    batch_tokens: int | None = None
    dtype: str = "auto"
    device: str | None = None

    def validate(self, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where`` and the key on a bad value (the model is not loaded)."""
        from nestrank.models.matryoshka.config import parse_config
        from nestrank.models.matryoshka.profiles import is_profile_name

        _one_of(self.norm, NORMS, "reranker.norm", where)
        _one_of(self.doc_mode, DOC_MODES, "reranker.doc_mode", where)
        _one_of(self.dtype, DTYPES, "reranker.dtype", where)
        for key in ("rerank_depth", "stride", "batch_tokens"):
            if getattr(self, key) is not None:
                _positive(getattr(self, key), f"reranker.{key}", where)
        if self.weight is not None and not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"{where}: reranker.weight must lie in [0, 1] (1 = the reranker alone), got {self.weight}")
        if self.profile is not None and self.config is not None:
            raise ConfigError(f"{where}: give reranker.profile or reranker.config, not both")
        if self.profile is not None and not is_profile_name(self.profile):
            raise ConfigError(f"{where}: reranker.profile {self.profile!r} is not a profile name (fix: a name such "
                              "as light, or put a configuration string in reranker.config)")
        if self.config is not None:
            try:
                parse_config(self.config)
            except ConfigError as exc:
                raise ConfigError(f"{where}: reranker.config: {exc}") from None
        if self.model is None and any(v is not None for v in (self.profile, self.config, self.rerank_depth,
                                                                self.weight)):
            raise ConfigError(f"{where}: the [reranker] section sets options but no reranker.model")


@dataclass
class PipelineConfig:
    """A whole pipeline; :meth:`validate` checks every value without loading a model or an index."""

    data: DataSection = field(default_factory=DataSection)
    first_stage: FirstStageSection = field(default_factory=FirstStageSection)
    reranker: RerankerSection = field(default_factory=RerankerSection)

    def validate(self, where: str = "pipeline") -> PipelineConfig:
        """Check every section; returns ``self``."""
        self.first_stage.validate(where)
        self.reranker.validate(where)
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain data (TOML/JSON-ready), without unset keys."""
        from dataclasses import asdict

        return {name: {k: v for k, v in asdict(section).items() if v is not None}
                for name, section in (("data", self.data), ("first_stage", self.first_stage),
                                      ("reranker", self.reranker))}


def load_pipeline_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and validate a pipeline TOML file; ``overrides`` maps ``"section.key"`` to a value."""
    where = str(path)
    return build_sections(PipelineConfig, read_toml(path, overrides, what="pipeline"), where).validate(where)


def _one_of(value: str, options: tuple[str, ...], key: str, where: str) -> None:
    if value not in options:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(options)}, got {value!r}")


def _positive(value: int, key: str, where: str) -> None:
    if value < 1:
        raise ConfigError(f"{where}: {key} must be >= 1, got {value}")
