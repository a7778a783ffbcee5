"""Rerank routes in their peers' shapes: Cohere v2, Jina, TEI, and unsorted scores.

Each route validates its shape, calls :func:`nestrank.serve.service.rerank` and writes the
peer's response. Relevance scores are the sigmoid of the raw scores (Cohere's and Jina's
range, TEI's default), ranked best first with ties broken by index, cut to ``top_n`` after
scoring; ``/v1/score`` and TEI's ``raw_scores`` return the reranker's raw scores.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response

from nestrank.serve import service
from nestrank.serve.errors import responses
from nestrank.serve.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    JinaDocument,
    JinaRerankRequest,
    JinaRerankResponse,
    JinaResult,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    TeiRank,
    TeiRerankRequest,
    Usage,
)

router = APIRouter()


async def _scored(request: Request, response: Response, body, documents, param: str = "documents", **options):
    """The request's texts and the rerank outcome (timing headers set): the part every shape shares."""
    state = request.app.state.nestrank
    texts = service.document_texts(documents, state.settings.max_docs_per_request, param=param)
    outcome = await service.rerank(state, request, model=body.model, query=body.query, documents=texts,
                                   cost=body.cost, **options)
    outcome.headers(response)
    return texts, outcome


@router.post("/v2/rerank", response_model=CohereRerankResponse, responses=responses(),
             tags=["rerank"])
async def cohere_rerank(body: CohereRerankRequest, request: Request, response: Response) -> CohereRerankResponse:
    """Cohere v2 rerank: results best first (`index`, `relevance_score`), `meta` with what ran."""
    texts, outcome = await _scored(request, response, body, body.documents, max_tokens_per_doc=body.max_tokens_per_doc)
    relevance = service.sigmoid(outcome.rows)
    results = [CohereResult(index=i, relevance_score=float(relevance[i]))
               for i in service.order(outcome.rows, body.top_n)]
    return CohereRerankResponse(id=str(uuid.uuid4()), results=results, meta=outcome.meta())


@router.post("/v1/rerank", response_model=JinaRerankResponse,
             responses=responses(), tags=["rerank"])
async def jina_rerank(body: JinaRerankRequest, request: Request, response: Response) -> JinaRerankResponse:
    """Jina rerank: like Cohere's, with `document.text` (unless `return_documents` is false) and `usage`."""
    texts, outcome = await _scored(request, response, body, body.documents, max_tokens_per_doc=body.max_tokens_per_doc)
    relevance = service.sigmoid(outcome.rows)
    results = [JinaResult(index=i, relevance_score=float(relevance[i]),
                          document=JinaDocument(text=texts[i]) if body.return_documents else None)
               for i in service.order(outcome.rows, body.top_n)]
    return JinaRerankResponse(model=body.model or outcome.model, results=results, meta=outcome.meta(),
                              usage=Usage(total_tokens=outcome.tokens, prompt_tokens=outcome.tokens))


@router.post("/rerank", response_model=list[TeiRank], responses=responses(tei=True),
             tags=["rerank"])
async def tei_rerank(body: TeiRerankRequest, request: Request, response: Response) -> list[TeiRank]:
    """text-embeddings-inference rerank: a bare array `[{index, score, text?}]`, best first."""
    texts, outcome = await _scored(request, response, body, body.texts, "texts", truncate=body.truncate is not False)
    scores = outcome.rows if body.raw_scores else service.sigmoid(outcome.rows)
    return [TeiRank(index=i, score=float(scores[i]), text=texts[i] if body.return_text else None)
            for i in service.order(outcome.rows, None)]


@router.post("/v1/score", response_model=ScoreResponse, responses=responses(),
             tags=["rerank"])
async def score(body: ScoreRequest, request: Request, response: Response) -> ScoreResponse:
    """Raw reranker scores in input order (not sorted), as `reranker.score` returns them."""
    texts, outcome = await _scored(request, response, body, body.documents, max_tokens_per_doc=body.max_tokens_per_doc)
    return ScoreResponse(model=body.model or outcome.model, data=[ScoreItem(index=i, score=float(s))
                                                                  for i, s in enumerate(outcome.rows)],
                         usage=Usage(total_tokens=outcome.tokens, prompt_tokens=outcome.tokens), meta=outcome.meta())
