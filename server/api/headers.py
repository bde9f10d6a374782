"""Security headers on every response the app sends.

- Every response: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
  `Referrer-Policy: no-referrer`.
- HTML (`text/html`): `Content-Security-Policy: PAGE_CSP`, under which the shipped web chat
  works as it is (it has no inline script, style or event handler; everything loads from
  `'self'`). A route that sets its own policy keeps it: `/docs`, whose Swagger UI loads from a
  CDN, sends `docs_csp`.
- Anything else: `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`, so a JSON
  body opened as a document can run nothing. A 304 gets no policy: its headers replace those of
  the cached response (a page revalidated on reload), and it has no content type to choose by.

A header the response already has is kept, not duplicated. This does not set HSTS (TLS ends at
the proxy in front, which should) or CORS headers (`CORSMiddleware` does), and does not reach a
500 that Starlette's outermost error middleware writes itself for an exception that escaped.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = ("default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
DATA_CSP = "default-src 'none'; frame-ancestors 'none'"
SWAGGER_CDN = "https://cdn.jsdelivr.net"
_ALWAYS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"))
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(list(message.get("headers", [])),
                                                           message["status"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def with_security_headers(headers: list[tuple[bytes, bytes]],
                          status: int = 200) -> list[tuple[bytes, bytes]]:
    present = {key.lower(): value for key, value in headers}
    wanted = list(_ALWAYS)
    if status != 304:  # a 304's headers update the cached page's: it has no type to go by
        html = present.get(b"content-type", b"").lower().startswith(b"text/html")
        wanted.append((b"content-security-policy", (PAGE_CSP if html else DATA_CSP).encode()))
    return headers + [(key, value) for key, value in wanted if key not in present]


def docs_csp(html: str) -> str:
    """The policy of the Swagger UI page `html`: its CDN, its own inline script (by hash)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html))
    return (f"default-src 'self'; script-src 'self' {SWAGGER_CDN} {hashes}; "
            f"style-src 'self' {SWAGGER_CDN}; img-src 'self' data: https://fastapi.tiangolo.com; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
