"""Multi-stage pipelines: first stage -> reranker at a chosen cost -> interpolation, and their tuning.

Importing this package is cheap; indexes and models load when a pipeline is built.
"""

from nestrank.pipeline.config import (
    DataSection,
    FirstStageSection,
    PipelineConfig,
    RerankerSection,
    load_pipeline_config,
)
from nestrank.pipeline.first_stage import FirstStage
from nestrank.pipeline.interpolate import choose_weight, interpolate
from nestrank.pipeline.pipeline import Hit, Pipeline, PipelineResult, StageStats, meta_path, read_meta
from nestrank.pipeline.rerank_stage import RerankStage
from nestrank.pipeline.run_cache import cached_run, cached_runs

__all__ = [
    "DataSection",
    "FirstStage",
    "FirstStageSection",
    "Hit",
    "Pipeline",
    "PipelineConfig",
    "PipelineResult",
    "RerankStage",
    "RerankerSection",
    "StageStats",
    "cached_run",
    "cached_runs",
    "choose_weight",
    "interpolate",
    "load_pipeline_config",
    "meta_path",
    "read_meta",
]
