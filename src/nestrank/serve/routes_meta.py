"""Service routes: ``/v1/models``, ``/info``, ``/health`` (alive), ``/ready`` (loaded and warmed), ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from nestrank import __version__
from nestrank.serve.errors import error_response
from nestrank.serve.schemas import ErrorResponse

router = APIRouter()
STARTED = int(time.time())


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "nestrank"
    task: str
    kind: str
    capabilities: list[str]
    limits: dict[str, Any]
    profiles: dict[str, dict[str, Any]]


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Status(BaseModel):
    status: str


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}}, tags=["service"])
async def models(request: Request) -> ModelList:
    """Served models: task, capabilities, limits and profiles (ask for one with `cost.profile` or `name:profile`)."""
    state = request.app.state.nestrank
    return ModelList(data=[ModelCard(id=name, created=STARTED, **engine.describe())
                           for name, engine in state.engines.items()])


@router.get("/info", responses={401: {"model": ErrorResponse}}, tags=["service"])
async def info(request: Request) -> dict[str, Any]:
    """Version, readiness, the server's limits and its models."""
    state = request.app.state.nestrank
    s = state.settings
    return {"version": __version__, "ready": state.ready.is_set(), "models": {m.name: m.task for m in s.models},
            "max_batch_tokens": s.max_batch_tokens, "max_batch_size": s.max_batch_size,
            "max_queued_tokens": s.max_queued_tokens, "max_client_batch_size": s.max_docs_per_request,
            "max_tokens_per_doc": s.max_tokens_per_doc, "default_profile": s.default_profile,
            "timeout_ms": s.timeout_ms, "search": state.search is not None}


@router.get("/health", response_model=Status, tags=["service"])
async def health() -> Status:
    """The process is alive (models may still be loading: see `/ready`)."""
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: {"model": ErrorResponse}}, tags=["service"])
async def ready(request: Request) -> Status | JSONResponse:
    """200 once every model is loaded and warmed, else 503."""
    state = request.app.state.nestrank
    if state.ready.is_set():
        return Status(status="ready")
    why = f"loading failed: {state.failed}" if state.failed else "models are still loading"
    return error_response(request, 503, f"not ready ({why})", code="not_ready")


@router.get("/metrics", tags=["service"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(request.app.state.nestrank.metrics.render(), media_type="text/plain; version=0.0.4")
