"""Client contracts against a real uvicorn server on 127.0.0.1: the cohere and openai SDKs, unchanged.

Also batching over real HTTP (concurrent requests score as sequential ones do; a client that
hangs up has its queued pairs dropped; overload is a 429 with Retry-After and a bounded queue)
and SIGTERM draining of the ``nestrank serve`` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from serve_helpers import DOCS, QUERY, free_port, live_server, settings_for

from nestrank.serve import create_app
from nestrank.serve.state import ServerState


@pytest.fixture(scope="module")
def base_url(loaded):  # noqa: F811
    with live_server(create_app(loaded.settings, loaded)) as url:
        yield url


def test_cohere_client_v2_reranks_with_the_cost_field(base_url, loaded):  # noqa: F811
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=base_url)
    response = client.rerank(model="tiny", query=QUERY, documents=DOCS, top_n=3)
    expected = loaded.engines["tiny"].reranker.score(QUERY, DOCS)
    order = sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))[:3]
    assert [r.index for r in response.results] == order
    np.testing.assert_allclose([r.relevance_score for r in response.results], 1 / (1 + np.exp(-expected[order])),
                               atol=1e-5)
    assert response.meta.cost["profile"] == "full"
    light = client.rerank(model="tiny", query=QUERY, documents=DOCS,
                          request_options={"additional_body_parameters": {"cost": {"profile": "light"}}})
    assert light.meta.cost["config"] == "depth=3,compress=2:0.5"
    alias = client.rerank(model="tiny:light", query=QUERY, documents=DOCS)
    assert [r.index for r in alias.results] == [r.index for r in light.results]
    with pytest.raises(cohere.core.api_error.ApiError) as caught:
        client.rerank(model="nope", query=QUERY, documents=DOCS)
    assert caught.value.status_code == 404


def test_openai_client_embeds(base_url, loaded):  # noqa: F811
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key="unused", base_url=base_url + "/v1", max_retries=0)
    texts = ["hello world", "cats purr", "a third text"]
    response = client.embeddings.create(model="emb", input=texts)  # the SDK asks for base64 and decodes it
    expected = loaded.engines["emb"].encoder.encode_passages(texts)
    np.testing.assert_allclose([d.embedding for d in response.data], expected, atol=1e-5)
    assert response.usage.total_tokens > 0 and [d.index for d in response.data] == [0, 1, 2]
    floats = client.embeddings.create(model="emb", input="hello world", encoding_format="float", dimensions=8)
    assert len(floats.data[0].embedding) == 8
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_concurrent_requests_score_as_sequential_ones(base_url):
    bodies = [{"query": f"{QUERY} {i}", "documents": DOCS[i % 5:] + DOCS[:i % 5],
               "cost": {"profile": ["full", "light", "balanced"][i % 3]}} for i in range(12)]
    with httpx.Client(base_url=base_url, timeout=60) as client:
        sequential = [client.post("/v1/score", json=b).json()["data"] for b in bodies]
        with ThreadPoolExecutor(12) as pool:
            concurrent = list(pool.map(lambda b: client.post("/v1/score", json=b).json()["data"], bodies))
    for one, other in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose([d["score"] for d in one], [d["score"] for d in other], atol=1e-5)


def _held(state: ServerState, model: str, gate: threading.Event) -> threading.Event:
    """Make the model's worker wait on ``gate`` before each batch; returns an event set when it first waits."""
    scheduler = state.schedulers[model]
    runner, waiting = scheduler.runner, threading.Event()

    def held(key, payloads):
        waiting.set()
        gate.wait(30)
        return runner(key, payloads)

    scheduler.runner = held
    return waiting


def test_a_disconnected_clients_pairs_are_not_computed(model_paths):  # noqa: F811
    state = ServerState(settings_for(model_paths, warmup=False)).load()
    gate = threading.Event()
    waiting = _held(state, "tiny", gate)
    try:
        with live_server(create_app(state.settings, state)) as url, httpx.Client(base_url=url, timeout=60) as client:
            blocker = threading.Thread(target=client.post, args=("/v1/score",),
                                       kwargs={"json": {"query": QUERY, "documents": DOCS[:1]}})
            blocker.start()
            assert waiting.wait(10)
            with pytest.raises(httpx.ReadTimeout):  # gives up while its pairs are queued
                httpx.post(url + "/v1/score", json={"query": QUERY, "documents": DOCS * 4}, timeout=0.5)
            deadline = time.monotonic() + 10
            while state.schedulers["tiny"].queued_tokens and time.monotonic() < deadline:
                time.sleep(0.05)
            assert state.schedulers["tiny"].queued_tokens == 0
            gate.set()
            blocker.join(10)
            metrics = client.get("/metrics").text
        assert 'nestrank_items_dropped_total{model="tiny",reason="disconnected"} 20.0' in metrics
        assert 'nestrank_items_computed_total{model="tiny"} 1.0' in metrics
    finally:
        gate.set()
        state.close()


def test_overload_gives_429_with_retry_after_and_a_bounded_queue(model_paths):  # noqa: F811
    state = ServerState(settings_for(model_paths, warmup=False, max_batch_tokens=512, max_queued_tokens=1024)).load()
    gate = threading.Event()
    waiting = _held(state, "tiny", gate)
    try:
        with live_server(create_app(state.settings, state)) as url, httpx.Client(base_url=url, timeout=60) as client:
            body = {"query": QUERY, "documents": DOCS}  # ~570 tokens
            with ThreadPoolExecutor(16) as pool:
                first = pool.submit(client.post, "/v1/score", json=body)
                assert waiting.wait(10)
                futures = [pool.submit(client.post, "/v1/score", json=body) for _ in range(15)]
                deadline = time.monotonic() + 20
                while sum(f.done() for f in futures) < 14 and time.monotonic() < deadline:
                    assert state.schedulers["tiny"].queued_tokens <= 1024
                    time.sleep(0.02)
                gate.set()
                responses = [first.result(30), *(f.result(30) for f in futures)]
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(429) >= 13 and set(statuses) <= {200, 429}
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1 and rejected.json()["error"]["type"] == "overloaded_error"
    finally:
        gate.set()
        state.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_in_flight_requests_then_exits(model_paths):  # noqa: F811
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from nestrank.cli import main; main()", "serve", "--port", str(port),
               "--model", f"tiny={model_paths['reranker']}", "--device", "cpu", "--dtype", "float32"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("server never became ready")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/score", json={"query": QUERY, "documents": DOCS * 100},
                                  timeout=120)
            time.sleep(0.3)  # the request is in flight
            process.send_signal(signal.SIGTERM)
            response = pending.result(120)
        assert response.status_code == 200 and len(response.json()["data"]) == 500
        # uvicorn re-raises the signal once it has shut down gracefully; nestrank exits 143 on SIGTERM
        assert process.wait(60) == 128 + signal.SIGTERM
        assert "Waiting for application shutdown" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
