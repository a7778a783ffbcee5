"""Request and response bodies of every endpoint, in each peer's exact shape (pydantic models).

Request models ignore unknown fields (clients send their own extras, such as Cohere's
``priority``); nestrank's additions are optional (``cost``, ``input_type``). The response
models make ``/openapi.json`` describe what is really sent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TEXT = Field(max_length=1_000_000)


class Cost(BaseModel):
    """How much a request may spend: one of a profile, a configuration, depth/width, or a latency budget."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(None, max_length=200, description="A profile of the model (`full`, `light`, ...).")
    config: str | None = Field(None, max_length=2000, description="A configuration, e.g. `depth=15,compress=8:0.5`.")
    depth: int | None = Field(None, ge=1, le=100000, description="Exit layer (default: the last).")
    width: float | None = Field(None, gt=0, le=1, description="Fraction of passage tokens kept after a quarter "
                                "of the layers.")
    budget_ms: float | None = Field(None, gt=0, le=1e9, description="Run the heaviest profile predicted to fit.")
    strict: bool = Field(False, description="With budget_ms: 422 when no profile fits (else the lightest runs).")


class TextDocument(BaseModel):
    """A document given as an object (Cohere v1 / Jina style)."""

    text: str = TEXT


Documents = list[str | TextDocument]


class CostEcho(BaseModel):
    """What ran: ``meta.cost`` of every rerank response."""

    profile: str | None
    config: str
    flops_ratio: float
    source: Literal["body", "alias", "header", "default", "budget"]
    predicted_ms: float | None = None


class RerankMeta(BaseModel):
    """Cohere's ``meta`` plus nestrank's ``cost``."""

    api_version: dict[str, str]
    billed_units: dict[str, float]
    tokens: dict[str, int]
    warnings: list[str]
    cost: CostEcho


class CohereRerankRequest(BaseModel):
    """``POST /v2/rerank`` (Cohere v2)."""

    model: str | None = Field(None, max_length=400)
    query: str = TEXT
    documents: Documents
    top_n: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(None, ge=1)
    cost: Cost | None = None


class CohereResult(BaseModel):
    index: int
    relevance_score: float


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: RerankMeta


class JinaRerankRequest(CohereRerankRequest):
    """``POST /v1/rerank`` (Jina): adds ``return_documents`` (default true)."""

    return_documents: bool = True


class JinaDocument(BaseModel):
    text: str


class JinaResult(BaseModel):
    index: int
    relevance_score: float
    document: JinaDocument | None = Field(None, exclude_if=lambda value: value is None)


class Usage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class JinaRerankResponse(BaseModel):
    model: str
    usage: Usage
    results: list[JinaResult]
    meta: RerankMeta


class TeiRerankRequest(BaseModel):
    """``POST /rerank`` (text-embeddings-inference)."""

    query: str = TEXT
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = Field(None, description="false: 413 for a text over the limit; default: cut it.")
    truncation_direction: Literal["Right", "right"] = "Right"
    model: str | None = Field(None, max_length=400)
    cost: Cost | None = None


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = Field(None, exclude_if=lambda value: value is None)


class ScoreRequest(BaseModel):
    """``POST /v1/score``: one query against documents; raw scores in input order."""

    model: str | None = Field(None, max_length=400)
    query: str = TEXT
    documents: Documents
    max_tokens_per_doc: int | None = Field(None, ge=1)
    cost: Cost | None = None


class ScoreItem(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[ScoreItem]
    usage: Usage
    meta: RerankMeta


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings`` (OpenAI); ``input_type`` (nestrank) picks query or passage settings."""

    input: str | list[str]
    model: str | None = Field(None, max_length=400)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=400)
    input_type: Literal["query", "passage", "document"] = "passage"


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class TeiEmbedRequest(BaseModel):
    """``POST /embed`` (text-embeddings-inference)."""

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = Field(None, description="false: 413 for a text over the limit; default: cut it.")
    truncation_direction: Literal["Right", "right"] = "Right"
    dimensions: int | None = Field(None, ge=1)
    prompt_name: Literal["query", "passage", "document"] | None = None
    model: str | None = Field(None, max_length=400)


class SearchRequest(BaseModel):
    """``POST /search``: first stage over the served index, then (optionally) the reranker."""

    query: str = TEXT
    k: int = Field(10, ge=1, le=1000, description="Results returned.")
    rerank_depth: int | None = Field(None, ge=0, le=1000, description="Candidates reranked (0: none).")
    model: str | None = Field(None, max_length=400, description="Reranker (default: the server's search model).")
    weight: float | None = Field(None, ge=0, le=1, description="Reranker share when interpolating with the "
                                 "first-stage score (default: the profile's; none: rerank scores only).")
    return_text: bool = True
    cost: Cost | None = None


class SearchHit(BaseModel):
    doc_id: str
    score: float
    first_stage_score: float
    rerank_score: float | None = None
    title: str | None = None
    text: str | None = None


class SearchResponse(BaseModel):
    query: str
    results: list[SearchHit]
    meta: dict[str, object]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """The one error envelope of every route but TEI's."""

    error: ErrorBody
    request_id: str


class TeiError(BaseModel):
    """text-embeddings-inference's error body (its routes keep it)."""

    error: str
    error_type: str
