"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every failure the API reports goes through `APIError` or one of the handlers installed by
`install_error_handlers`, including FastAPI's own validation errors (400 here, not 422) and
unknown routes, so clients see one error format everywhere.

Domain errors (`server.errors.CameoError`) and failed engine outputs carry a code and no
status: `STATUS` below is the one place a code becomes an HTTP status (`domain_error`,
`status_of`); a route lets a domain error propagate unless it adds context, and the handler
answers it.

Anything a client sent that a message quotes goes through `quote` (or `clip`, unquoted, for a
`param` the client named), which shortens it, so an error never echoes a megabyte back; as a
backstop, `APIError` cuts any message at `MAX_MESSAGE_CHARS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import CameoError
from server.registry.store import is_disk_full

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    507: "server_error",
}


# Domain and engine error codes -> HTTP status (any other code of a CameoError is a 400: a
# refusal of the client's input; any other engine output code is a 500).
STATUS: dict[str, int] = {
    # the registry and uploads
    "model_not_found": 404, "already_exists": 409, "insufficient_storage": 507,
    "catalog_unavailable": 503,
    # merged mode
    "merge_unavailable": 409,
    # the engine's per-request failures (`server.engine.types.ErrorCode`)
    "context_length_exceeded": 400, "invalid_seed": 400, "invalid_grammar": 400, "timeout": 504,
    "adapter_load_failed": 500, "numerical_error": 500, "sampling_error": 500,
    "grammar_error": 500, "engine_error": 500, "engine_unavailable": 500,
    # the base model
    "unsupported_model": 503, "internal_error": 500,
}

MAX_MESSAGE_CHARS = 1000
_UNION_TAG = re.compile(r"[\w-]+\[.*\]|str|int|float|bool|none|bytes|[A-Z][A-Za-z0-9]*")


def quote(value: object, limit: int = 80) -> str:
    """`repr(value)` for an error message, cut to `limit` characters with the full length said."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clip(text: str, limit: int = 80) -> str:
    """`text` as it is, or cut to `limit` characters with the full length said."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "..."
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def status_of(code: str | None, default: int = 500) -> int:
    return STATUS.get(code or "", default)


def domain_error(exc: CameoError) -> APIError:
    """The HTTP error a domain error means (its message, code and param as they are)."""
    status = status_of(exc.code, 400)
    return APIError(status, exc.message, param=exc.param, code=exc.code,
                    type="timeout" if status == 504 else None)


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(CameoError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(OSError, _os_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _domain_error(request: Request, exc: CameoError) -> JSONResponse:
    return domain_error(exc).response()


def _is_union_tag(part: object) -> bool:
    """A member of a union in a pydantic error location (`str`, `list[ContentPart]`, ...)."""
    return isinstance(part, str) and bool(_UNION_TAG.fullmatch(part))


def _reported(errors: Sequence[Any]) -> dict[str, Any]:
    """The error to report: the first, or when it is one member of a failed union, the
    deepest error under that union (the member the input was meant for)."""
    if not errors:
        return {}
    first = dict(errors[0])
    loc = tuple(first.get("loc", ()))
    tag = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
    if tag is None:
        return first
    under = [dict(e) for e in errors if tuple(e.get("loc", ()))[:tag] == loc[:tag]]
    return max(under, key=lambda e: len(e.get("loc", ())))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = _reported(exc.errors())
    location = [str(part) for part in first.get("loc", ())
                if part not in ("body",) and not _is_union_tag(part)]
    param = clip(".".join(location)) or None  # a forbidden extra field is the client's name
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif param:
        message = f"{param}: {message}"
    return APIError(400, message, param=param, code="invalid_value").response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail) if exc.detail else "error"
    if exc.status_code == 400 and "parsing the body" in message:  # FastAPI: undecodable body
        return APIError(400, "the request body is not valid JSON in UTF-8",
                        code="invalid_value").response()
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {quote(request.url.path)}"
        if request.url.path.startswith("/v1/responses"):
            message += ("; Cameo speaks chat completions: point the client at "
                        "/v1/chat/completions (docs/FRONTENDS.md)")
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = (f"{request.method} is not allowed on {quote(request.url.path)}"
                   + (f"; allowed: {allowed}" if allowed else ""))
    headers = dict(exc.headers) if exc.headers else None
    return APIError(exc.status_code, message, headers=headers).response()


async def _os_error(request: Request, exc: OSError) -> JSONResponse:
    if is_disk_full(exc):  # wherever it happens: staging an upload, copying files, the catalog
        log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
        return APIError(507, "the server's disk is full; free space (DELETE still works) and "
                        "retry", code="insufficient_storage").response()
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return APIError(500, "internal server error", code="internal_error").response()
