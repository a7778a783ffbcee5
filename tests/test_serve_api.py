"""Every endpoint's shape (golden structures), per-request cost, and the error contract, in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_helpers import DOCS, QUERY, settings_for

from nestrank.serve import create_app
from nestrank.serve.state import ServerState

fastapi_testclient = pytest.importorskip("fastapi.testclient")


@pytest.fixture(scope="module")
def client(loaded):  # noqa: F811
    return fastapi_testclient.TestClient(create_app(loaded.settings, loaded))


def shape(value):
    """The structure of a JSON value with numbers and strings replaced by their type names."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


COST = {"profile": "str", "config": "str", "flops_ratio": "float", "source": "str", "predicted_ms": "NoneType"}
META = {"api_version": {"version": "str"}, "billed_units": {"search_units": "float"},
        "tokens": {"input_tokens": "int", "output_tokens": "int"}, "warnings": ["str"], "cost": COST}
GOLDEN = {
    "/v2/rerank": {"id": "str", "results": [{"index": "int", "relevance_score": "float"}], "meta": META},
    "/v1/rerank": {"model": "str", "usage": {"total_tokens": "int", "prompt_tokens": "int"},
                   "results": [{"index": "int", "relevance_score": "float", "document": {"text": "str"}}],
                   "meta": META},
    "/rerank": [{"index": "int", "score": "float", "text": "str"}],
    "/v1/score": {"object": "str", "model": "str", "data": [{"index": "int", "object": "str", "score": "float"}],
                  "usage": {"total_tokens": "int", "prompt_tokens": "int"}, "meta": META},
    "/v1/embeddings": {"object": "str", "data": [{"object": "str", "index": "int", "embedding": ["float"]}],
                       "model": "str", "usage": {"prompt_tokens": "int", "total_tokens": "int"}},
    "/embed": [["float"]],
}
BODIES = {
    "/v2/rerank": {"model": "tiny", "query": QUERY, "documents": DOCS, "top_n": 3},
    "/v1/rerank": {"model": "tiny", "query": QUERY, "documents": DOCS, "top_n": 3},
    "/rerank": {"query": QUERY, "texts": DOCS, "return_text": True},
    "/v1/score": {"model": "tiny", "query": QUERY, "documents": DOCS},
    "/v1/embeddings": {"model": "emb", "input": ["hello world", "cats purr"]},
    "/embed": {"inputs": ["hello world", "cats purr"]},
}


@pytest.mark.parametrize("path", list(GOLDEN))
def test_each_shape_matches_its_golden_structure(client, path):
    response = client.post(path, json=BODIES[path])
    assert response.status_code == 200, response.text
    body = response.json()
    if path in ("/v2/rerank", "/v1/rerank", "/v1/score"):
        body["meta"]["warnings"] = ["a warning"]  # the structure of the list, whatever it holds
    assert shape(body) == GOLDEN[path]
    assert float(response.headers["x-queue-time"]) >= 0 and float(response.headers["x-inference-time"]) > 0
    assert response.headers["x-request-id"]


def test_rerank_shapes_agree_with_each_other_and_with_the_library(client, loaded):  # noqa: F811
    reranker = loaded.engines["tiny"].reranker
    expected = reranker.score(QUERY, DOCS)
    raw = [d["score"] for d in client.post("/v1/score", json=BODIES["/v1/score"]).json()["data"]]
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    cohere = client.post("/v2/rerank", json={**BODIES["/v2/rerank"], "top_n": None}).json()["results"]
    order = sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))
    assert [r["index"] for r in cohere] == order
    np.testing.assert_allclose([r["relevance_score"] for r in cohere], 1 / (1 + np.exp(-expected[order])), atol=1e-5)
    tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert [r["index"] for r in tei] == order
    np.testing.assert_allclose([r["score"] for r in tei], expected[order], atol=1e-5)
    jina = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": False}).json()
    assert all("document" not in r for r in jina["results"]) and jina["model"] == "tiny"


def test_embeddings_equal_the_encoder_and_support_base64_and_dimensions(client, loaded):  # noqa: F811
    encoder = loaded.engines["emb"].encoder
    texts = ["hello world", "cats purr"]
    expected = encoder.encode_passages(texts)
    data = client.post("/v1/embeddings", json={"model": "emb", "input": texts}).json()["data"]
    np.testing.assert_allclose([d["embedding"] for d in data], expected, atol=1e-5)
    packed = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()["data"]
    import base64

    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed]
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    short = np.array(client.post("/embed", json={"inputs": texts, "dimensions": 8}).json())
    assert short.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    query = client.post("/v1/embeddings", json={"input": "hello world", "input_type": "query"}).json()["data"]
    np.testing.assert_allclose(query[0]["embedding"], encoder.encode_queries(["hello world"])[0], atol=1e-5)


@pytest.mark.parametrize(("how", "expected_profile", "source"), [
    ({"json": {"cost": {"profile": "light"}}}, "light", "body"),
    ({"json": {"model": "tiny:light"}}, "light", "alias"),
    ({"headers": {"X-Nestrank-Profile": "light"}}, "light", "header"),
    ({"json": {"cost": {"config": "depth=5"}}}, "balanced", "body"),
    ({"json": {"cost": {"depth": 4, "width": 0.5}}}, None, "body"),
    ({}, "full", "default"),
])
def test_cost_is_chosen_per_request_and_echoed(client, loaded, how, expected_profile, source):  # noqa: F811
    body = {"model": "tiny", "query": QUERY, "documents": DOCS, **how.get("json", {})}
    response = client.post("/v2/rerank", json=body, headers=how.get("headers"))
    assert response.status_code == 200, response.text
    cost = response.json()["meta"]["cost"]
    assert (cost["profile"], cost["source"]) == (expected_profile, source)
    reranker = loaded.engines["tiny"].reranker
    expected_config = {"light": "depth=3,compress=2:0.5", "balanced": "depth=5", "full": "full"}.get(
        expected_profile, "depth=4,compress=2:0.5")
    assert cost["config"] == expected_config == response.headers["x-nestrank-config"]
    assert (cost["flops_ratio"] == 1.0) == (expected_profile == "full")
    raw = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    direct = reranker.score(QUERY, DOCS, config=None if expected_config == "full" else expected_config)
    np.testing.assert_allclose([raw[i] for i in range(len(DOCS))], 1 / (1 + np.exp(-direct)), atol=1e-5)


def test_budget_picks_the_heaviest_profile_that_fits_else_the_lightest(client):
    generous = client.post("/v1/score", json={"query": QUERY, "documents": DOCS, "cost": {"budget_ms": 1e8}}).json()
    assert generous["meta"]["cost"]["profile"] == "full" and generous["meta"]["cost"]["source"] == "budget"
    assert generous["meta"]["cost"]["predicted_ms"] > 0
    tight = client.post("/v1/score", json={"query": QUERY, "documents": DOCS, "cost": {"budget_ms": 1e-6}}).json()
    assert tight["meta"]["cost"]["profile"] == "light"
    assert any("no profile fits budget_ms" in w for w in tight["meta"]["warnings"])
    strict = client.post("/v1/score", json={"query": QUERY, "documents": DOCS,
                                            "cost": {"budget_ms": 1e-6, "strict": True}})
    assert strict.status_code == 422 and strict.json()["error"]["param"] == "cost"


def test_long_documents_are_cut_and_counted_never_the_query(client):
    long_doc = "purring " * 40  # 320 bytes: the tiny model reads 48 passage tokens
    body = {"query": QUERY, "documents": [long_doc, "short"], "max_tokens_per_doc": 10}
    meta = client.post("/v2/rerank", json=body).json()["meta"]
    assert meta["warnings"] == ["1 document(s) longer than 10 tokens were cut to 10"]
    assert client.post("/v2/rerank", json={**body, "max_tokens_per_doc": None}).json()["meta"]["warnings"] == [
        "1 document(s) longer than 48 tokens were cut to 48"]
    too_long = client.post("/v2/rerank", json={"query": "q" * 65, "documents": ["a"]})
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "query"
    tei = client.post("/rerank", json={"query": QUERY, "texts": [long_doc], "truncate": False})
    assert tei.status_code == 413 and tei.json() == {"error": tei.json()["error"], "error_type": "Validation"}


def test_top_n_and_ties(client):
    same = ["identical text"] * 4
    results = client.post("/v2/rerank", json={"query": QUERY, "documents": same}).json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    top = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2}).json()["results"]
    assert len(top) == 2


def envelope(response, status, param=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"} and set(body["error"]) == {"message", "type", "code", "param"}
    assert body["request_id"] == response.headers["x-request-id"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def test_error_contract(client):
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": []}), 400, "documents")
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["ok", "  "]}), 400, "documents[1]")
    envelope(client.post("/v2/rerank", json={"query": " ", "documents": ["ok"]}), 400, "query")
    envelope(client.post("/v2/rerank", json={"model": "nope", "query": QUERY, "documents": ["a"]}), 404, "model")
    envelope(client.post("/v2/rerank", json={"model": "tiny:nope", "query": QUERY, "documents": ["a"]}), 404, "model")
    envelope(client.post("/v2/rerank", json={"model": "emb", "query": QUERY, "documents": ["a"]}), 400, "model")
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"] * 1001}), 413, "documents")
    envelope(client.post("/v2/rerank", json={"query": QUERY}), 422, "documents")
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"], "top_n": 0}), 422, "top_n")
    envelope(client.post("/v2/rerank", content=b"{not json", headers={"content-type": "application/json"}), 422)
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"],
                                             "cost": {"profile": "light", "depth": 3}}), 422, "cost")
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"], "cost": {"config": "depth=99"}}),
             422, "cost")
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"]},
                         headers={"X-Nestrank-Profile": "nope"}), 422, "cost")
    envelope(client.get("/no/such/route"), 404)
    tei = client.post("/rerank", json={"query": QUERY, "texts": []})
    assert tei.status_code == 400 and tei.json() == {"error": "texts is empty: give at least one",
                                                     "error_type": "Empty"}
    assert client.post("/embed", json={"inputs": 3}).json()["error_type"] == "Validation"


def test_payload_too_large_is_a_json_413(model_paths):  # noqa: F811
    state = ServerState(settings_for(model_paths, max_body_bytes=1000))
    client = fastapi_testclient.TestClient(create_app(state.settings, state))
    error = envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["x" * 2000]}), 413)
    assert "1000 bytes" in error["message"]


def test_api_key_guards_the_api_but_not_health_or_metrics(model_paths):  # noqa: F811
    state = ServerState(settings_for(model_paths, api_key="s3cret"))
    client = fastapi_testclient.TestClient(create_app(state.settings, state))
    error = envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"]}), 401)
    assert error["type"] == "authentication_error"
    envelope(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/v1/models", headers={"x-api-key": "s3cret"}).status_code == 200
    assert client.post("/rerank", json={}).json()["error_type"] == "Validation"  # TEI body for TEI's 401 too
    assert client.post("/rerank", json={}).status_code == 401


def test_not_ready_is_503_and_health_stays_200(model_paths):  # noqa: F811
    state = ServerState(settings_for(model_paths))  # never loaded
    client = fastapi_testclient.TestClient(create_app(state.settings, state))
    assert client.get("/health").json() == {"status": "ok"}
    envelope(client.get("/ready"), 503)
    envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": ["a"]}), 503)


def test_deadline_passed_is_504(model_paths):  # noqa: F811
    state = ServerState(settings_for(model_paths, timeout_ms=1, warmup=False)).load()
    try:
        state.schedulers["tiny"].runner = _slow(state.schedulers["tiny"].runner)
        client = fastapi_testclient.TestClient(create_app(state.settings, state))
        first = envelope(client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS * 20}), 504)
        assert first["code"] == "deadline_exceeded"
    finally:
        state.close()


def _slow(runner):
    import time

    def slow(key, payloads):
        time.sleep(0.05)
        return runner(key, payloads)

    return slow


def test_models_info_and_metrics(client):
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["tiny"]["task"] == "rerank" and models["emb"]["task"] == "embed"
    assert set(models["tiny"]["profiles"]) == {"full", "light", "balanced"}
    assert models["tiny"]["profiles"]["balanced"] == {"config": "depth=5", "rerank_depth": 3, "weight": 0.5,
                                                      "ms_per_pair": 1.0}
    info = client.get("/info").json()
    assert info["ready"] is True and info["models"] == {"tiny": "rerank", "emb": "embed"}
    assert client.get("/ready").json() == {"status": "ready"}
    text = client.get("/metrics").text
    assert 'nestrank_requests_total{route="/v1/models",status="200"}' in text
    assert "nestrank_batch_items_bucket" in text and 'nestrank_ready 1.0' in text
    schema = client.get("/openapi.json").json()
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/v1/score", "/v1/embeddings", "/embed", "/search",
            "/v1/models", "/health", "/ready"} <= set(schema["paths"])
    json.dumps(schema)


def test_search_reranks_the_first_stage(tiny_beir, model_paths):  # noqa: F811
    from nestrank.data import Dataset
    from nestrank.retrieve import BM25Index

    index_dir = tiny_beir.parent / "bm25.idx"
    BM25Index.build(Dataset.open(tiny_beir).corpus).save(index_dir)
    settings = settings_for(model_paths, index=str(index_dir), corpus=str(tiny_beir), search_model="tiny",
                            search_rerank_depth=3, warmup=False)
    state = ServerState(settings).load()
    try:
        client = fastapi_testclient.TestClient(create_app(settings, state))
        plain = client.post("/search", json={"query": "why do cats purr", "k": 5, "rerank_depth": 0}).json()
        assert plain["results"][0]["doc_id"] == "d1" and plain["meta"]["rerank_depth"] == 0
        body = client.post("/search", json={"query": "why do cats purr", "k": 5}).json()
        hits = body["results"]
        assert body["meta"]["rerank_depth"] == min(3, len(plain["results"])) and body["meta"]["weight"] is None
        reranked = [h for h in hits if h["rerank_score"] is not None]
        assert [h["score"] for h in reranked] == sorted((h["rerank_score"] for h in reranked), reverse=True)
        assert hits[0]["title"] is not None and hits[0]["text"]
        fused = client.post("/search", json={"query": "why do cats purr", "k": 5,
                                             "cost": {"profile": "balanced"}}).json()
        assert fused["meta"]["weight"] == 0.5 and all(0 <= h["score"] <= 1 for h in fused["results"][:3])
    finally:
        state.close()
