"""Embedding routes: OpenAI ``/v1/embeddings`` (float or base64) and TEI ``/embed`` (a bare array of vectors)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request, Response

from nestrank.serve import service
from nestrank.serve.errors import responses
from nestrank.serve.schemas import Embedding, EmbeddingsRequest, EmbeddingsResponse, TeiEmbedRequest, Usage

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=responses(), tags=["embed"])
async def openai_embeddings(body: EmbeddingsRequest, request: Request, response: Response) -> EmbeddingsResponse:
    """OpenAI embeddings; texts over the model's limit are cut (as OpenAI-compatible servers do)."""
    state = request.app.state.nestrank
    texts = [body.input] if isinstance(body.input, str) else body.input
    texts = service.document_texts(texts, state.settings.max_docs_per_request, param="input")
    outcome = await service.embed(state, request, model=body.model, texts=texts, input_type=body.input_type,
                                  truncate=True, dimensions=body.dimensions)
    outcome.headers(response)
    rows = outcome.rows.astype(np.float32)
    if body.encoding_format == "base64":
        data = [Embedding(index=i, embedding=base64.b64encode(row.astype("<f4").tobytes()).decode("ascii"))
                for i, row in enumerate(rows)]
    else:
        data = [Embedding(index=i, embedding=row.tolist()) for i, row in enumerate(rows)]
    return EmbeddingsResponse(data=data, model=body.model or outcome.model,
                              usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens))


@router.post("/embed", response_model=list[list[float]], responses=responses(tei=True), tags=["embed"])
async def tei_embed(body: TeiEmbedRequest, request: Request, response: Response) -> list[list[float]]:
    """text-embeddings-inference embed: one vector per input; ``truncate: false`` refuses long inputs (413).

    The model's own normalisation applies (``normalize`` cannot undo it).
    """
    state = request.app.state.nestrank
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    texts = service.document_texts(texts, state.settings.max_docs_per_request, param="inputs")
    outcome = await service.embed(state, request, model=body.model, texts=texts,
                                  input_type=body.prompt_name or "passage", truncate=body.truncate is not False,
                                  dimensions=body.dimensions)
    outcome.headers(response)
    return outcome.rows.astype(np.float32).tolist()
