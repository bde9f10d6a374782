"""Bearer-key checks: user keys for inference routes, the admin key for adapter management, and
the identity a request is rate-limited under.

- No `CAMEO_API_KEYS`: inference routes are open. Otherwise a listed key (or the admin key) is
  needed: 401 when missing or wrong.
- `CAMEO_ADMIN_KEY` set: admin routes need it; a valid user key gets 403, anything else 401.
  Unset: admin routes are accepted from loopback clients only (403 from elsewhere), under the
  Host and proxy rules of `server.api.origin`.
- Either way, an admin write from a browser page on a foreign origin is refused (403), by the
  Origin rule of `server.api.origin`, before any key is looked at.
- `Authorization` is parsed in one place (`bearer_token`): the scheme in any case, any
  whitespace around and between the parts. Keys are compared in constant time.
- `caller_identity`: the rate-limit bucket is the validated key when keys are configured, else
  the client's address (behind a proxy, the proxy's: every client shares one bucket there).

This module does not decide which routes are admin routes (the routers do, by depending on
`require_admin`) and does not count requests (`server.api.admission` does).
"""

from __future__ import annotations

import hmac

from fastapi import Request

from server.api.errors import APIError
from server.api.origin import check_loopback_trust, check_origin
from server.settings import Settings


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, however spelt; None when there is none."""
    parts = request.headers.get("authorization", "").split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None


def _matches(token: str | None, keys: list[str]) -> bool:
    if token is None:
        return False
    found = False
    for key in keys:  # no early exit: the time taken does not say which key was close
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _user_keys(settings: Settings) -> list[str]:
    keys = settings.api_key_list
    return [*keys, settings.admin_key] if keys and settings.admin_key else keys


def require_user(request: Request) -> None:
    keys = _user_keys(_settings(request))
    if keys and not _matches(bearer_token(request), keys):
        raise APIError(401, "a valid API key is required (Authorization: Bearer <key>)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def require_admin(request: Request) -> None:
    settings = _settings(request)
    check_origin(request, settings, keyed=bool(settings.admin_key))
    if not settings.admin_key:
        check_loopback_trust(request, settings)
        return
    token = bearer_token(request)
    if _matches(token, [settings.admin_key]):
        return
    if _matches(token, settings.api_key_list):
        raise APIError(403, "this key may not manage adapters; use the admin key",
                       code="insufficient_permissions")
    raise APIError(401, "the admin key is required (Authorization: Bearer <key>)",
                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def caller_identity(request: Request) -> str:
    """The rate-limit bucket of a request: `key:<key>` for a valid key when keys are configured,
    else `addr:<client address>` (whatever `Authorization` says)."""
    token = bearer_token(request)
    keys = _user_keys(_settings(request))
    if keys and _matches(token, keys):
        return f"key:{token}"
    return f"addr:{request.client.host if request.client else 'unknown'}"
