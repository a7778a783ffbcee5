"""The error contract: one JSON envelope for every failure, TEI's own body on TEI's routes.

``{"error": {"message", "type", "code", "param"}, "request_id"}`` with 400 (empty or blank
input), 401 (missing or wrong API key), 404 (unknown model or route), 413 (too many documents,
body too large, or a text over the limit with ``truncate: false``), 422 (schema or cost
errors), 429 (overloaded, with ``Retry-After``), 503 (not ready, shutting down), 504 (deadline
passed). TEI's ``/rerank`` and ``/embed`` answer ``{"error", "error_type"}`` as TEI does.
Client input never causes a 5xx: anything unexpected is a 500 that names the request id.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nestrank.serve.schemas import ErrorResponse, TeiError

log = logging.getLogger("nestrank.serve")

TEI_ROUTES = frozenset({"/rerank", "/embed"})
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
         429: "overloaded_error", 499: "client_closed_request", 500: "server_error", 503: "service_unavailable",
         504: "timeout_error"}
TEI_TYPES = {400: "Empty", 413: "Validation", 422: "Validation", 429: "Overloaded", 503: "Unhealthy", 504: "Backend"}
#: Statuses every API route documents (the OpenAPI ``responses``).
DOCUMENTED = (400, 401, 404, 413, 422, 429, 503, 504)


class ApiError(Exception):
    """An HTTP error with the envelope's fields; raised by handlers, rendered by :func:`install`."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or TYPES.get(status, "error")
        self.param = param
        self.headers = headers or {}


def request_id(request: Request) -> str:
    """The id the gate middleware gave this request (``-`` outside it)."""
    return str(request.scope.get("state", {}).get("request_id", "-"))


def error_body(path: str, rid: str, status: int, message: str, *, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """The envelope, or TEI's ``{"error", "error_type"}`` on TEI's routes."""
    if path in TEI_ROUTES:
        return {"error": message, "error_type": TEI_TYPES.get(status, "Validation")}
    kind = TYPES.get(status, "error")
    return {"error": {"message": message, "type": kind, "code": code or kind, "param": param}, "request_id": rid}


def error_response(request: Request, status: int, message: str, *, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """:func:`error_body` as a response."""
    return JSONResponse(error_body(request.url.path, request_id(request), status, message, code=code, param=param),
                        status_code=status, headers=headers)


def responses(tei: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for an API route: every documented error status with its body model."""
    model = TeiError if tei else ErrorResponse
    return {status: {"model": model} for status in DOCUMENTED}


def _validation_param(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return (f"{param}: {message}" if param else message) + (f" (and {len(errors) - 1} more)" if len(errors) > 1
                                                             else ""), param


def install(app: FastAPI) -> None:
    """Register the handlers that render every error in the contract's shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_param(exc)
        return error_response(request, 422, message, code="invalid_value", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request_id(request))
        return error_response(request, 500, f"internal error (request {request_id(request)}); see the server log")


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for a 429 (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
