"""Large pipeline runs on Ray Data: queries sharded over an actor pool, one pipeline per actor.

Each actor loads the index and the reranker once (:meth:`Pipeline.from_config`) and runs its
batches of queries through :meth:`Pipeline.search`; the driver gathers the ranked lists and the
stages' costs. Every query is processed independently, so the run equals the local engine's
(up to float rounding of differently-padded batches). Connects to the running cluster
(``RAY_ADDRESS``) or starts a local one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nestrank.data import Run
from nestrank.errors import ConfigError
from nestrank.pipeline.config import PipelineConfig
from nestrank.pipeline.pipeline import PipelineResult
from nestrank.pipeline.stats import StageStats

__all__ = ["search_ray"]


class _PipelineActor:
    """A Ray Data map_batches worker: one loaded pipeline, many batches of queries."""

    def __init__(self, config: dict[str, Any], corpus_path: str) -> None:
        from nestrank.data import Corpus
        from nestrank.pipeline import Pipeline
        from nestrank.tomlconfig import build_sections

        settings = build_sections(PipelineConfig, config, "pipeline").validate()
        self.pipeline = Pipeline.from_config(settings, corpus=Corpus.open(corpus_path))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        qids = [str(q) for q in batch["qid"]]
        result = self.pipeline.search(dict(zip(qids, (str(t) for t in batch["text"]), strict=True)))
        stages = json.dumps([stage.__dict__ for stage in result.stages])
        return {"qid": qids, "ranked": [json.dumps(result.run[q]) for q in qids],
                "stages": [stages] + [""] * (len(qids) - 1)}


def search_ray(config: PipelineConfig, queries: Mapping[str, str], corpus_path: str | Path, *, actors: int = 2,
               batch_queries: int = 64) -> PipelineResult:
    """Run ``config`` over ``queries`` on a Ray Data pool of ``actors``; the corpus is read from ``corpus_path``.

    Stage seconds are summed over the actors (compute time); the run is the union of theirs.
    """
    import ray

    if actors < 1 or batch_queries < 1:
        raise ConfigError(f"actors and batch_queries must be >= 1, got {actors} and {batch_queries}")
    if not queries:
        raise ConfigError("the pipeline got no queries")
    config.validate()
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    rows = [{"qid": qid, "text": text} for qid, text in queries.items()]
    blocks = max(1, min(len(rows), actors * 4))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _PipelineActor, batch_size=batch_queries, concurrency=actors,
        fn_constructor_kwargs={"config": config.to_dict(), "corpus_path": str(corpus_path)})
    clock = time.perf_counter()
    run = Run()
    stages: dict[str, StageStats] = {}
    for row in dataset.iter_rows():
        run.add(row["qid"], [tuple(item) for item in json.loads(row["ranked"])])
        for record in json.loads(row["stages"]) if row["stages"] else []:
            _merge(stages, StageStats(**record))
    result = PipelineResult(run, Run(), list(stages.values()), config.to_dict())
    result.config["engine"] = {"name": "ray", "actors": actors, "wall_seconds": round(time.perf_counter() - clock, 3)}
    return result


def _merge(stages: dict[str, StageStats], stage: StageStats) -> None:
    """Add one batch's stage figures into the totals (the FLOPs ratio of the summed FLOPs)."""
    total = stages.get(stage.name)
    if total is None:
        stages[stage.name] = stage
        return
    total.seconds += stage.seconds
    total.queries += stage.queries
    total.pairs += stage.pairs
    if total.details.get("flops") is not None and stage.details.get("flops") is not None:
        total.details["flops"] += stage.details["flops"]
        total.details["full_flops"] += stage.details["full_flops"]
        total.flops_ratio = total.details["flops"] / total.details["full_flops"]
