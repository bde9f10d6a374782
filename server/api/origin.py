"""Who may drive the admin routes besides a key holder: the Origin, Host and proxy rules.

Trust model. Cameo has no cookies and no sessions: its keys are Bearer headers, which a browser
never adds by itself, so a page on another origin cannot use a key it does not know. What such a
page *can* do is make a browser send "simple" requests (a form post, `fetch` with
`mode: "no-cors"`) to any address the browser reaches, loopback included, and, by DNS rebinding,
make its own host name resolve to 127.0.0.1. Without `CAMEO_ADMIN_KEY` the admin routes trust a
network address (loopback), which such requests have, so the address alone is not enough:

1. Origin (every admin write, with or without an admin key): a request whose method is not GET,
   HEAD or OPTIONS and that carries an `Origin` header must come from the server's own origin
   (the Origin's host[:port] is the request's `Host`; the scheme is not compared, since behind a
   TLS proxy the server sees plain HTTP) or from an origin listed in `CAMEO_CORS_ORIGINS`. A `*`
   there admits any origin only while an admin key is set (which the request then needs); with
   no key only origins listed by name count, since the address is the credential. Browsers send
   `Origin` on every cross-origin request and on same-origin writes; other clients send none
   and are not affected. A request with no `Origin` but `Sec-Fetch-Site: cross-site` or
   `same-site` is refused the same way. With a key this is defence in depth and costs nothing:
   the shipped page is same-origin, and a page elsewhere needs `CAMEO_CORS_ORIGINS` for its CORS
   preflight anyway.
2. Host (address-trusted requests only, any method): the `Host` header must be a loopback name
   (`localhost`, `127.0.0.1`, `[::1]`, any port) or a name listed in `CAMEO_ALLOWED_HOSTS`. A
   rebound page sends its own name as `Host`, so it is refused. A request with no `Host` at all
   (HTTP/1.0) did not come from a browser and passes this rule.
3. Proxies (address-trusted requests only): a request carrying `Forwarded`, `X-Forwarded-For` or
   `X-Real-IP` passed through a proxy, whose own address is the loopback one; it is not trusted
   as loopback whatever the headers say. Behind a proxy, set `CAMEO_ADMIN_KEY`.

Every refusal is a 403 in OpenAI's error shape. This module does not check keys (`auth.py`
does, and calls these rules), answer CORS preflights (`CORSMiddleware`), or work out a proxied
client's real address (Cameo never trusts forwarded addresses).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from server.api.errors import APIError, quote
from server.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_CROSS_FETCH_SITES = frozenset({"cross-site", "same-site"})


def check_origin(request: Request, settings: Settings, *, keyed: bool) -> None:
    """Rule 1: a browser write from a foreign origin is refused (`keyed`: an admin key is set)."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is None:
        if request.headers.get("sec-fetch-site", "").lower() in _CROSS_FETCH_SITES:
            raise _refused("a cross-site browser request", "cross_origin_refused")
        return
    if _same_origin(origin, request.headers.get("host")):
        return
    listed = cors_origins(settings)
    if origin.rstrip("/").lower() in listed or (keyed and "*" in listed):
        return
    raise _refused(f"the origin {quote(origin)}", "cross_origin_refused",
                   hint="only the server's own page or an origin in CAMEO_CORS_ORIGINS may "
                        "change the registry")


def check_loopback_trust(request: Request, settings: Settings) -> None:
    """Rules 2 and 3: whether a request without a key may be trusted for coming from loopback."""
    client = request.client.host if request.client else ""
    if client not in LOOPBACK_ADDRESSES:
        raise APIError(403, "admin routes are accepted from loopback only while no "
                       "CAMEO_ADMIN_KEY is set", code="insufficient_permissions")
    forwarded = [name for name in FORWARDING_HEADERS if name in request.headers]
    if forwarded:
        raise APIError(403, f"a proxied request ({forwarded[0]}) is not trusted as loopback; "
                       "set CAMEO_ADMIN_KEY to manage adapters through a proxy",
                       code="proxied_request_refused")
    host = request.headers.get("host")
    if host is not None and host_name(host) not in allowed_hosts(settings):
        raise _refused(f"the host {quote(host)}", "host_not_allowed",
                       hint="admin routes without CAMEO_ADMIN_KEY answer loopback names and "
                            "CAMEO_ALLOWED_HOSTS only")


def host_name(host: str) -> str:
    """The name part of a Host header, lower-case: `[::1]:8000` -> `::1`, `a.b:80` -> `a.b`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def allowed_hosts(settings: Settings) -> frozenset[str]:
    listed = (host_name(h) for h in settings.allowed_hosts.split(",") if h.strip())
    return LOOPBACK_NAMES | frozenset(listed)


def cors_origins(settings: Settings) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in settings.cors_origins.split(",")
                     if o.strip())


def _same_origin(origin: str, host: str | None) -> bool:
    parts = urlsplit(origin.strip())
    return (host is not None and parts.scheme in ("http", "https")
            and parts.netloc.lower() == host.strip().lower())


def _refused(what: str, code: str, hint: str = "") -> APIError:
    return APIError(403, f"{what} may not use the admin routes" + (f": {hint}" if hint else ""),
                    code=code)
