"""Schemathesis against ``/openapi.json`` (in-process): no 5xx, every response as documented.

And hypothesis properties of the rerank routes: shuffling documents permutes their scores,
``top_n`` results are a prefix of the full ranking, each index appears once, repeated calls
agree, and the server's scores equal ``reranker.rank``'s for the same configuration.
"""

from __future__ import annotations

import numpy as np
import pytest

from nestrank.serve import create_app

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(loaded):  # noqa: F811
    return create_app(loaded.settings, loaded)


def operations():
    """(method, path) of every documented API route, for one test each."""
    return [("POST", p) for p in ("/v2/rerank", "/v1/rerank", "/rerank", "/v1/score", "/v1/embeddings", "/embed",
                                  "/search")] + [("GET", p) for p in ("/v1/models", "/info", "/health", "/ready")]


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path"), operations())
def test_no_server_errors_and_responses_match_the_schema(api_schema, method, path):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(checks=CHECKS)

    check()


WORDS = st.sampled_from(["cat", "cats", "purr", "dog", "barks", "honey", "bees", "fish", "sea", "the", "a", "why"])
TEXT = st.lists(WORDS, min_size=1, max_size=8).map(" ".join)
DOCS = st.lists(TEXT, min_size=1, max_size=6)
PROFILE = st.sampled_from(["full", "light", "balanced"])
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    return TestClient(app)


def scores(client, query, docs, profile):
    response = client.post("/v1/score", json={"query": query, "documents": docs, "cost": {"profile": profile}})
    assert response.status_code == 200, response.text
    return np.array([d["score"] for d in response.json()["data"]])


@FAST
@given(query=TEXT, docs=DOCS, profile=PROFILE, data=st.data())
def test_shuffling_documents_permutes_scores_alike(client, query, docs, profile, data):
    permutation = data.draw(st.permutations(range(len(docs))))
    base = scores(client, query, docs, profile)
    shuffled = scores(client, query, [docs[i] for i in permutation], profile)
    np.testing.assert_allclose(shuffled, base[list(permutation)], atol=1e-5)


@FAST
@given(query=TEXT, docs=DOCS, profile=PROFILE, top_n=st.integers(1, 8))
def test_top_n_is_a_prefix_of_the_full_ranking_with_each_index_once(client, query, docs, profile, top_n):
    body = {"query": query, "documents": docs, "cost": {"profile": profile}}
    full = client.post("/v2/rerank", json=body).json()["results"]
    top = client.post("/v2/rerank", json={**body, "top_n": top_n}).json()["results"]
    assert sorted(r["index"] for r in full) == list(range(len(docs)))
    assert [r["index"] for r in top] == [r["index"] for r in full][:top_n]
    assert [r["relevance_score"] for r in full] == sorted((r["relevance_score"] for r in full), reverse=True)


@FAST
@given(query=TEXT, docs=DOCS, profile=PROFILE)
def test_repeated_calls_agree_and_equal_reranker_rank(client, loaded, query, docs, profile):  # noqa: F811
    first = scores(client, query, docs, profile)
    np.testing.assert_allclose(scores(client, query, docs, profile), first, atol=1e-5)
    reranker = loaded.engines["tiny"].reranker
    ranked = reranker.rank(query, docs, config=profile)
    tei = client.post("/rerank", json={"query": query, "texts": docs, "raw_scores": True,
                                       "cost": {"profile": profile}}).json()
    np.testing.assert_allclose([r["score"] for r in tei], [r.score for r in ranked], atol=1e-5)
    tied = {r.score for r in ranked}
    if len(tied) == len(ranked):  # without ties the order is fully determined
        assert [r["index"] for r in tei] == [int(r.doc_id) for r in ranked]
