"""HTTP edges over real sockets: ambiguous body framing, echoed input, security headers.

Both uvicorn HTTP parsers are run: h11 (what a plain `pip install uvicorn` uses) and httptools
(what uvicorn picks when it is installed).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from server.api.app import create_app
from server.api.headers import DATA_CSP, PAGE_CSP
from server.composition import Cameo
from tests.helpers import live_server

PARSERS = ["h11", "httptools"]
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMUGGLED = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


@pytest.fixture(scope="module", params=PARSERS)
def url(request: pytest.FixtureRequest, cameo: Cameo) -> Iterator[str]:
    if request.param == "httptools":
        pytest.importorskip("httptools")
    with live_server(create_app(cameo.settings, cameo), http=request.param) as base:
        yield base


def _exchange(sock: socket.socket, raw: bytes) -> bytes:
    """Send `raw`, read one response (head and Content-Length body)."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF within the timeout)."""
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _connect(url: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=3)
    return sock


def test_content_length_with_transfer_encoding_is_refused_and_closed(url: str) -> None:
    with _connect(url) as sock:  # the control: a plain request keeps the connection open
        ok = _exchange(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        assert not _closed(sock)
        response = _exchange(sock, SMUGGLED)
        assert response.startswith(b"HTTP/1.1 400"), response
        assert b"connection: close" in response.lower()
        assert _closed(sock), "the connection stayed open after an ambiguous request"
    if b"application/json" in response:  # h11 lets it through to the app; httptools refuses it
        error = json.loads(response.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "ambiguous_framing" and error["type"] == "invalid_request_error"


def test_the_app_answers_ambiguous_framing_itself(cameo: Cameo) -> None:
    with live_server(create_app(cameo.settings, cameo), http="h11") as base, \
            _connect(base) as sock:
        response = _exchange(sock, SMUGGLED)
        assert b"application/json" in response and b"ambiguous_framing" in response
        assert b"x-content-type-options: nosniff" in response.lower()
        assert _closed(sock)


def test_echoed_input_is_shortened(url: str) -> None:
    huge = "m" * 1_000_000
    response = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                          json={"model": huge, "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "(1000000 characters)" in error["message"]
    assert len(response.content) < 1000
    path = "/v1/" + "p" * 10_000
    response = httpx.get(f"{url}{path}")
    assert response.status_code == 404 and len(response.content) < 1000
    assert "(10004 characters)" in response.json()["error"]["message"]
    extra = httpx.post(f"{url}/v1/personas/import", json={"card": {}, "k" * 100_000: 1})
    assert extra.status_code == 400 and len(extra.content) < 1000  # the name of a forbidden field
    assert extra.json()["error"]["param"].endswith("(100000 characters)")
    short = httpx.post(f"{url}/v1/chat/completions", json={"model": "nobody", "messages": [
        {"role": "user", "content": "Hi"}]})
    assert "'nobody' does not exist" in short.json()["error"]["message"]  # short ones whole


def _assert_security_headers(response: httpx.Response, csp: str) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff", response.url
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"] == csp, response.url
    assert len(headers.get_list("content-security-policy")) == 1


def test_security_headers_on_every_response(url: str) -> None:
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    _assert_security_headers(page, PAGE_CSP)
    assert "default-src 'self'" in PAGE_CSP and "frame-ancestors 'none'" in PAGE_CSP
    for response in (httpx.get(f"{url}/app.js"), httpx.get(f"{url}/v1/models"),
                     httpx.get(f"{url}/health"), httpx.get(f"{url}/nowhere"),
                     httpx.post(f"{url}/v1/chat/completions", content=b"{",
                                headers={"content-type": "application/json"})):
        assert response.status_code in (200, 400, 404, 413), response.text
        _assert_security_headers(response, DATA_CSP)
    with _connect(url) as sock:  # a 413 written by the body-limit middleware itself
        head = _exchange(sock, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 99999999\r\n\r\n").lower()
    assert head.startswith(b"http/1.1 413") and b"x-content-type-options: nosniff" in head
    assert b"x-frame-options: deny" in head and b"content-security-policy: default-src" in head
    etag = page.headers["etag"]  # a reload revalidates: the 304 must not replace the page's CSP
    revalidated = httpx.get(f"{url}/", headers={"If-None-Match": etag})
    assert revalidated.status_code == 304
    assert "content-security-policy" not in revalidated.headers
    assert revalidated.headers["x-content-type-options"] == "nosniff"
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200
    policy = docs.headers["content-security-policy"]
    assert "'sha256-" in policy and "'unsafe-inline'" not in policy and "frame-ancestors" in policy
