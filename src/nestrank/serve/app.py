"""The app factory: :func:`create_app` builds the FastAPI app of a nestrank server.

A pure ASGI middleware (:class:`Gate`) runs in front of every route: it gives each request an
id (``x-request-id``, echoed), refuses bodies over ``max_body_bytes`` with a 413 envelope
(whatever ``Content-Length`` claims, the bytes are counted), checks the API key (Bearer, or
``x-api-key``; compared in constant time; ``/health``, ``/ready`` and ``/metrics`` stay open)
and records per-route Prometheus metrics. The lifespan starts loading the models (unless the
state was started by the caller) and, on shutdown (uvicorn's graceful SIGTERM handling first
lets in-flight requests finish), drains the schedulers.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from nestrank import __version__
from nestrank.serve.errors import error_body, install
from nestrank.serve.settings import ServeSettings
from nestrank.serve.state import ServerState

OPEN_ROUTES = frozenset({"/health", "/ready", "/metrics"})
DOCS_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
#: Routes with their own metrics label (anything else counts as ``other``).
KNOWN_ROUTES = frozenset({"/v2/rerank", "/v1/rerank", "/rerank", "/v1/score", "/v1/embeddings", "/embed", "/search",
                          "/v1/models", "/info", *OPEN_ROUTES, *DOCS_ROUTES})


def create_app(settings: ServeSettings, state: ServerState | None = None) -> FastAPI:
    """A FastAPI app serving ``settings``' models (or an already loaded ``state``).

    The app does not block on model loading: ``/ready`` is 503 until the models are loaded and
    warmed. Pass a ``state`` you loaded (``ServerState(settings).load()``) to serve it at once;
    the app then leaves it running when its lifespan ends.
    """
    from nestrank.serve import routes_embed, routes_meta, routes_rerank, search

    state = state or ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = not state.started
        state.start()
        yield
        if owned:
            state.close()

    app = FastAPI(title="nestrank", version=__version__, lifespan=lifespan,
                  description="Reranking and embeddings with per-request cost (Matryoshka depth and width). "
                              "Cohere, Jina, TEI and OpenAI shapes; see docs/serving.md.")
    app.state.nestrank = state
    install(app)
    for module in (routes_rerank, routes_embed, search, routes_meta):
        app.include_router(module.router)
    app.add_middleware(Gate, state=state, api_key=settings.api_key_or_env, max_body_bytes=settings.max_body_bytes)
    return app


class Gate:
    """Request id, body size limit, API key and per-route metrics, in front of every route (pure ASGI)."""

    def __init__(self, app: Any, *, state: ServerState, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", b"").decode("latin-1")[:100] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status_seen = [500]

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode("latin-1")))
            await send(message)

        try:
            if self.api_key is not None and path not in OPEN_ROUTES and path not in DOCS_ROUTES \
                    and not self._authorized(headers):
                await _reply(send_logged, path, rid, 401, "missing or invalid API key (send Authorization: Bearer "
                             "KEY)", {"www-authenticate": "Bearer"})
                return
            body, too_large = await self._read_body(scope, headers, receive)
            if too_large:
                await _reply(send_logged, path, rid, 413, f"request body larger than {self.max_body_bytes} bytes",
                             {"connection": "close"})
                return
            await self.app(scope, _replay(body, receive), send_logged)
        finally:
            route = path if path in KNOWN_ROUTES else "other"
            self.state.metrics.requests.labels(route, str(status_seen[0])).inc()
            self.state.metrics.request_seconds.labels(route).observe(time.perf_counter() - start)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        given = headers.get("authorization", b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get("x-api-key", b"")
        return hmac.compare_digest(token, self.api_key)

    async def _read_body(self, scope: dict, headers: dict[str, bytes], receive: Any) -> tuple[list[dict], bool]:
        """The request's body messages, read up to the limit; ``True`` when it is over."""
        if scope["method"] in ("GET", "HEAD"):
            return [], False
        length = headers.get("content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return [], True
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, False
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return [], True
            if not message.get("more_body", False):
                return messages, False


def _replay(messages: list[dict], receive: Any) -> Any:
    """A ``receive`` that hands out the buffered body, then the real channel (for disconnects)."""
    pending = list(messages)

    async def replayed() -> dict:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _reply(send: Any, path: str, rid: str, status: int, message: str, headers: dict[str, str]) -> None:
    """An error answered by the gate itself, in the route's error shape."""
    data = json.dumps(error_body(path, rid, status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
