"""Request context: a request id on every response, one structured log line per request,
the count of requests in flight, and refusal of new work while the server drains.

The id is the client's `X-Request-ID` when it sends a sane one, else a new one; it is returned
in the `X-Request-ID` response header and carried in the log line. While draining (after
SIGTERM) every route except the probes answers 503, and `/ready` says why.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import APIError

log = logging.getLogger("cameo.access")

PROBES = ("/health", "/ready")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, state: object) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        if getattr(self.state, "draining", False) and path not in PROBES:
            await _send_error(send, APIError(503, "the server is shutting down",
                                             code="shutting_down"), request_id)
            return
        counted = path not in PROBES
        if counted:
            self.state.in_flight += 1  # type: ignore[attr-defined]
        start = time.monotonic()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.state.in_flight -= 1  # type: ignore[attr-defined]
            log.info("%s %s %d", scope.get("method"), path, status, extra={
                "request_id": request_id, "method": scope.get("method"), "path": path,
                "status": status, "duration_ms": round((time.monotonic() - start) * 1000, 1),
                "client": (scope.get("client") or ("", 0))[0]})


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SANE_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


async def _send_error(send: Send, error: APIError, request_id: str) -> None:
    import json

    payload = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", request_id.encode()), (b"retry-after", b"5")]})
    await send({"type": "http.response.body", "body": payload})
