"""``nestrank serve``: an HTTP reranking and embedding server with per-request cost and dynamic batching.

Importing this package is cheap; FastAPI and torch load when an app is built::

    from nestrank.serve import ServeSettings, create_app, parse_model_spec

    settings = ServeSettings(models=(parse_model_spec("rerank=smollm2-135m"), parse_model_spec("embed=minilm-l6")))
    app = create_app(settings)          # run it with uvicorn; /ready turns 200 once the models are warm

Modules: :mod:`~nestrank.serve.settings` (what to serve), :mod:`~nestrank.serve.scheduler`
(token-budget dynamic batching), :mod:`~nestrank.serve.cost` (per-request cost and the latency
model), :mod:`~nestrank.serve.engines` (the models), :mod:`~nestrank.serve.service` (the
internal handlers), ``routes_*`` and :mod:`~nestrank.serve.search` (the API families),
:mod:`~nestrank.serve.errors` (the error contract), :mod:`~nestrank.serve.ray_serve` (Ray Serve).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nestrank.serve.settings import ModelSpec, ServeSettings, parse_model_spec

if TYPE_CHECKING:
    from fastapi import FastAPI

    from nestrank.serve.state import ServerState

__all__ = ["ModelSpec", "ServeSettings", "create_app", "parse_model_spec", "run"]


def create_app(settings: ServeSettings, state: ServerState | None = None) -> FastAPI:
    """The FastAPI app of a server (see :func:`nestrank.serve.app.create_app`)."""
    from nestrank.serve.app import create_app as build

    return build(settings, state)


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8080, **uvicorn_options: Any) -> None:
    """Serve ``settings`` with uvicorn until SIGTERM/SIGINT (in-flight requests finish, queues drain)."""
    import logging

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, **{"timeout_graceful_shutdown": 60,
                                                                "log_level": "info", **uvicorn_options})
