"""Requests whose body is framed two ways are refused (RFC 9112 section 6.3).

A request with both `Transfer-Encoding` and `Content-Length` can be read one way by a proxy in
front of Cameo and another way by Cameo (request smuggling); the RFC says to treat it as an
error, or at least to close the connection after it. uvicorn's httptools parser already refuses
it, but h11 (the parser uvicorn falls back to when httptools is not installed, as with a plain
`pip install uvicorn`) serves it and keeps the connection open. `FramingMiddleware` answers such
a request 400 `ambiguous_framing` in OpenAI's error shape with `Connection: close`, which makes
either uvicorn parser close the connection after the response.

It does not read the body, and checks nothing else about framing: the HTTP parser does that.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import error_body

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class FramingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _framed_twice(scope):
            await _reject(send)
            return
        await self.app(scope, receive, send)


def _framed_twice(scope: Scope) -> bool:
    return {key for key, _ in scope.get("headers", [])} >= _FRAMING


async def _reject(send: Send) -> None:
    payload = json.dumps(error_body(
        "a request may not carry both Content-Length and Transfer-Encoding",
        "invalid_request_error", None, "ambiguous_framing")).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
