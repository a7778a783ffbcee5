"""The internal handlers behind every API family: one for reranking, one for embeddings.

The route modules (:mod:`nestrank.serve.routes_rerank` ...) only translate their peer's JSON
shape to these calls and back. Both validate early (400/413/422), prepare items off the event
loop, go through the model's :class:`~nestrank.serve.scheduler.Scheduler`, and turn its
outcomes into the error contract (429 overloaded, 504 deadline, 503 shutting down).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from nestrank.errors import ConfigError
from nestrank.serve import cost as costs
from nestrank.serve.engines import EmbedEngine, Prepared, QueryTooLong, RerankEngine
from nestrank.serve.errors import ApiError, retry_after
from nestrank.serve.scheduler import Dropped, Job, Overloaded
from nestrank.serve.schemas import CostEcho, RerankMeta, TextDocument

if TYPE_CHECKING:
    from nestrank.serve.state import ServerState


@dataclass
class Outcome:
    """What one model call produced, and how."""

    model: str
    rows: np.ndarray
    tokens: int
    warnings: list[str]
    queue_ms: float
    inference_ms: float
    cost: CostEcho | None = None

    def meta(self) -> RerankMeta:
        """Cohere's ``meta`` (billed units, tokens, warnings) with ``cost``."""
        return RerankMeta(api_version={"version": "2"}, billed_units={"search_units": 1},
                          tokens={"input_tokens": self.tokens, "output_tokens": 0}, warnings=self.warnings,
                          cost=self.cost)

    def headers(self, response: Response) -> None:
        """``x-queue-time`` / ``x-inference-time`` (ms, as TEI) and, for reranks, what ran."""
        response.headers["x-queue-time"] = f"{self.queue_ms:.1f}"
        response.headers["x-inference-time"] = f"{self.inference_ms:.1f}"
        if self.cost is not None:
            response.headers["x-nestrank-profile"] = self.cost.profile or ""
            response.headers["x-nestrank-config"] = self.cost.config


def document_texts(documents: Sequence[str | TextDocument], max_docs: int, param: str = "documents") -> list[str]:
    """Plain texts of the request's documents; 400 for none or a blank one, 413 for too many."""
    texts = [d if isinstance(d, str) else d.text for d in documents]
    if not texts:
        raise ApiError(400, f"{param} is empty: give at least one", code="empty_input", param=param)
    if len(texts) > max_docs:
        raise ApiError(413, f"{len(texts)} {param} in one request; this server takes at most {max_docs} "
                       "(split the request)", code="too_many_documents", param=param)
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(400, f"{param}[{i}] is empty", code="empty_input", param=f"{param}[{i}]")
    return texts


async def rerank(state: ServerState, request: Request, *, model: str | None, query: str, documents: Sequence[str],
                 cost: costs.CostRequest | None, max_tokens_per_doc: int | None = None,
                 truncate: bool = True) -> Outcome:
    """Score ``documents`` against ``query`` with a served reranker, at the cost the request chose.

    ``rows`` of the outcome holds one raw score per document, in input order.
    """
    engine, alias = state.engine(model, "rerank")
    assert isinstance(engine, RerankEngine)
    if not query.strip():
        raise ApiError(400, "query is empty", code="empty_input", param="query")
    header = request.headers.get(costs.HEADER)
    try:
        choice = costs.choose(engine, cost, alias, header, state.settings.default_profile)
        if choice is None:  # a latency budget: measure the request at full cost, then pick
            full = await run_in_threadpool(engine.prepare, query, documents, engine.resolve("full"),
                                           max_tokens_per_doc)
            lengths = _mean_lengths(engine, query, documents[0], full)
            choice = costs.choose_for_budget(engine, cost, state.latency, full.tokens,
                                             state.schedulers[engine.name].estimated_wait_s(), lengths)
        prepared = await run_in_threadpool(engine.prepare, query, documents, choice.key, max_tokens_per_doc)
    except QueryTooLong as exc:
        raise ApiError(422, str(exc), code="query_too_long", param="query") from None
    except ConfigError as exc:
        raise ApiError(422, str(exc), code="invalid_cost", param="cost") from None
    warnings = list(choice.warnings)
    if prepared.truncated:
        if not truncate:
            raise ApiError(413, f"{prepared.truncated} text(s) longer than {prepared.limit} tokens and truncate is "
                           "false", code="input_too_long", param="texts")
        warnings.append(f"{prepared.truncated} document(s) longer than {prepared.limit} tokens were cut to "
                        f"{prepared.limit}")
    outcome = await _run(state, request, engine.name, prepared, warnings)
    ratio = engine.flops_ratio(prepared.key, *_mean_lengths(engine, query, documents[0], prepared))
    outcome.cost = CostEcho(profile=choice.profile, config=choice.config, flops_ratio=round(ratio, 4),
                            source=choice.source, predicted_ms=choice.predicted_ms)
    outcome.rows = outcome.rows.astype(np.float64)
    return outcome


async def embed(state: ServerState, request: Request, *, model: str | None, texts: Sequence[str], input_type: str,
                truncate: bool, dimensions: int | None) -> Outcome:
    """Embed ``texts`` with a served encoder; ``dimensions`` keeps the first d values, re-normalised."""
    engine, _ = state.engine(model, "embed")
    assert isinstance(engine, EmbedEngine)
    dim = engine.encoder.dim
    if dimensions is not None and dimensions > dim:
        raise ApiError(422, f"dimensions={dimensions} exceeds the model's {dim}", code="invalid_value",
                       param="dimensions")
    try:
        prepared = await run_in_threadpool(engine.prepare, texts, "query" if input_type == "query" else "passage",
                                           truncate)
    except ConfigError as exc:
        raise ApiError(413, str(exc), code="input_too_long", param="input") from None
    warnings = [f"{prepared.truncated} input(s) cut to {prepared.limit} tokens"] if prepared.truncated else []
    outcome = await _run(state, request, engine.name, prepared, warnings)
    if dimensions is not None and dimensions < dim:
        cut = outcome.rows[:, :dimensions]
        outcome.rows = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return outcome


async def _run(state: ServerState, request: Request, name: str, prepared: Prepared, warnings: list[str]) -> Outcome:
    """Put the prepared items through the model's scheduler; map its outcomes to HTTP errors."""
    scheduler = state.schedulers[name]
    deadline = time.monotonic() + state.settings.timeout_ms / 1000
    job = Job(prepared.key, prepared.payloads, prepared.lengths, deadline)
    try:
        rows = await scheduler.run(job, request.is_disconnected)
    except Overloaded as exc:
        state.metrics.rejected.labels(name).inc()
        raise ApiError(429, str(exc), code="overloaded", headers=retry_after(exc.retry_after)) from None
    except Dropped as exc:
        if exc.reason == "deadline":
            raise ApiError(504, f"deadline of {state.settings.timeout_ms} ms passed before the request ran",
                           code="deadline_exceeded") from None
        if exc.reason == "shutdown":
            raise ApiError(503, "the server is shutting down", code="shutting_down") from None
        raise ApiError(499, "client closed the request", code="client_closed_request") from None
    finally:
        state.metrics.queued_tokens.labels(name).set(scheduler.queued_tokens)
    queue_s = (job.started or time.monotonic()) - job.submitted
    state.metrics.queue_seconds.labels(name).observe(queue_s)
    return Outcome(name, rows, prepared.tokens, warnings, 1000 * queue_s, 1000 * job.inference_s)


def _mean_lengths(engine: RerankEngine, query: str, document: str, prepared: Prepared) -> tuple[int, int, int]:
    """(query, mean passage, other) tokens of a request, for FLOPs estimates."""
    query_len, passage_len, other = engine.pair_lengths(query, document, prepared.key)
    mean_pair = prepared.tokens / len(prepared.lengths)
    return query_len, max(1, round(mean_pair - query_len - other)), other


def order(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices best first, ties by index; the first ``top_n`` only."""
    ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return ranked[:top_n] if top_n is not None else ranked


def sigmoid(scores: np.ndarray) -> np.ndarray:
    """Relevance in [0, 1] (Cohere, Jina, TEI without ``raw_scores``), monotone in the raw score."""
    return 1.0 / (1.0 + np.exp(-np.clip(scores, -500, 500)))
