"""The Ray Serve deployment of the same app: 2 CPU replicas on a local Ray, same answers as one process."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from serve_helpers import DOCS, QUERY, free_port, settings_for

pytestmark = pytest.mark.ray


def test_two_replicas_answer_like_the_library(model_paths):  # noqa: F811
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from nestrank.models import MatryoshkaReranker
    from nestrank.serve.ray_serve import deployment, start_ray

    settings = settings_for(model_paths, warmup=False)
    port = free_port()
    try:
        start_ray("127.0.0.1", port, num_cpus=2, log_to_driver=False)
        serve.run(deployment(settings, replicas=2, num_cpus=0.5).bind(), name="nestrank", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(url + "/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        expected = MatryoshkaReranker.from_pretrained(str(model_paths["reranker"]), dtype="float32",
                                                      device="cpu").score(QUERY, DOCS)
        for _ in range(6):  # requests spread over both replicas
            data = httpx.post(url + "/v1/score", json={"query": QUERY, "documents": DOCS}, timeout=60).json()["data"]
            np.testing.assert_allclose([d["score"] for d in data], expected, atol=1e-5)
        status = serve.status().applications["nestrank"].deployments["nestrank"]
        assert status.replica_states.get("RUNNING") == 2
        bad = httpx.post(url + "/v2/rerank", json={"query": QUERY, "documents": []}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents"
    finally:
        serve.shutdown()
        ray.shutdown()
