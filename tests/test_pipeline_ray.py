"""The Ray engine of `pipeline run`: queries sharded over actors give the local engine's run."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from helpers import write_beir  # noqa: E402

from nestrank.data import Dataset  # noqa: E402
from nestrank.models import Profile, write_profiles  # noqa: E402
from nestrank.pipeline import Pipeline, PipelineConfig, RerankerSection  # noqa: E402
from nestrank.pipeline.ray_engine import search_ray  # noqa: E402


@pytest.mark.ray
def test_ray_engine_run_equals_the_local_engine(tmp_path, tiny_checkpoint):
    checkpoint = tiny_checkpoint
    write_profiles(checkpoint, {"quick": Profile("quick", "depth=2,compress=1:0.5", rerank_depth=3, weight=0.4)})
    ds = Dataset.open(write_beir(tmp_path / "tiny"))
    config = PipelineConfig(reranker=RerankerSection(model=str(checkpoint), profile="quick", dtype="float32",
                                                     device="cpu")).validate()
    local = Pipeline.from_config(config, corpus=ds.corpus).search(ds.queries)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = search_ray(config, ds.queries, ds.corpus_path, actors=2, batch_queries=1)
    finally:
        ray.shutdown()
    assert sorted(distributed.run) == sorted(local.run)
    for qid in local.run:
        assert distributed.run.doc_ids(qid) == local.run.doc_ids(qid)
        np.testing.assert_allclose([s for _, s in distributed.run[qid]], [s for _, s in local.run[qid]], atol=1e-5)
    by_name = {stage.name: stage for stage in distributed.stages}
    assert by_name["rerank"].pairs == local.stages[1].pairs and by_name["first_stage"].queries == 3
    assert by_name["rerank"].flops_ratio == pytest.approx(local.stages[1].flops_ratio, rel=1e-12)
    assert distributed.config["engine"]["actors"] == 2
