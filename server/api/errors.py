"""Every error the API returns has the body {"error": {"code", "message"}}; this module maps the
exceptions of the layers below onto HTTP statuses in one place."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api.responses import FastJSONResponse
from server.artifact import ArtifactError
from server.batching import DeadlineExceeded, Overloaded, ShuttingDown
from server.engine import EngineUnavailable, InputRefused
from server.registry.base import Conflict, InvalidRoute, LimitExceeded, NotFound, RegistryUnavailable
from server.registry.names import InvalidName

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input", 429: "overloaded",
    499: "disconnected", 500: "internal", 503: "not_ready", 504: "timeout",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.code = code or _STATUS_CODES.get(status, "error")
        self.headers = headers or {}


class PayloadTooLarge(StarletteHTTPException):
    """Raised while a body is read (server/api/middleware.py). An HTTPException, because FastAPI turns any
    other exception raised while it parses a body into 400 "There was an error parsing the body"."""

    def __init__(self, limit: int, what: str, got: int | None = None):
        super().__init__(413, f"{what}: expected at most {limit} bytes, got {'more' if got is None else got}")


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; its queued inputs were dropped."""

    def __init__(self):
        super().__init__("the client went away before its answer was ready")


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None):
    body = {"error": {"code": code or _STATUS_CODES.get(status, "error"), "message": message}}
    if status == 503 and "Retry-After" not in (headers or {}):  # every 503 is worth retrying (SPEC 2): say when
        headers = {**(headers or {}), "Retry-After": "1"}
    return FastJSONResponse(body, status_code=status, headers=headers)


def invalid_json(what: str, reason: str) -> str:
    """The one message for a body that does not parse as JSON, whoever parsed it (FastAPI for the
    request models, the KServe codec with orjson): what was expected, and where the parser stopped."""
    return f"expected {what}, got invalid JSON ({reason})"


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":  # FastAPI's: json.loads stopped at character loc[-1] of the body
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            return invalid_json("a JSON request body", f"{reason}: character {error['loc'][-1]} of {len(exc.body or '')}")
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        got = error.get("input")
        got_text = "" if error.get("type") == "missing" else f", got {_short(got)}"
        parts.append(f"{where}: {error.get('msg', 'invalid')}{got_text}")
    return "; ".join(parts)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_DOMAIN_ERRORS: list[tuple[type[Exception], int]] = [
    (NotFound, 404), (InvalidName, 422), (Conflict, 409), (LimitExceeded, 409), (InvalidRoute, 422), (ArtifactError, 422),
    (InputRefused, 422), (DeadlineExceeded, 504), (ShuttingDown, 503), (ClientDisconnected, 499),
]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(422, _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's: a body that is not UTF-8, or multipart that does not parse
            kind = request.headers.get("content-type", "no content type").split(";")[0]
            return error_response(422, f"body: expected {kind} that parses, got {exc.detail.lower()}")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names the first route with the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded):
        return error_response(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RegistryUnavailable)
    async def _registry_down(_: Request, exc: RegistryUnavailable):
        # SPEC 4: nothing is known about what was asked, so never 401 or 404; a replica answers the rest.
        return error_response(503, str(exc), code="registry_unavailable", headers={"Retry-After": "1"})

    @app.exception_handler(EngineUnavailable)
    async def _engine_down(_: Request, exc: EngineUnavailable):
        return error_response(503, str(exc), headers={"Retry-After": "1"})

    for exc_type, status in _DOMAIN_ERRORS:
        app.add_exception_handler(exc_type, _make_handler(status))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error; the request id in the logs has the details")


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for the request's path (built once, then cached)."""
    path = request.url.path
    return sorted({method.upper() for template, operations in request.app.openapi()["paths"].items()
                   if re.fullmatch(re.sub(r"\{[^}/]+\}", "[^/]+", template), path) for method in operations})


def _make_handler(status: int):
    async def handler(_: Request, exc: Exception):
        return error_response(status, str(exc))

    return handler


def protocol_route(shape: Callable[[str, str], dict]) -> type[APIRoute]:
    """A route class for another protocol's routes (KServe v2, TEI, the HF Inference API): their errors
    keep the statuses and headers the handlers above give, with the body as `shape(code, message)`,
    the error body that protocol's clients parse."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def reshaped(request: Request):
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 — every failure leaves as the documented error body
                    response = await _handle(request, exc)
                    error = orjson.loads(response.body)["error"]
                    kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
                    return FastJSONResponse(shape(error["code"], error["message"]), response.status_code, kept)

            return reshaped

    return ProtocolRoute


async def _handle(request: Request, exc: Exception):
    handlers = request.app.exception_handlers
    handler = next(handlers[kind] for kind in type(exc).__mro__ if kind in handlers)  # Exception is always there
    return await handler(request, exc)
