"""Bearer-key checks: user keys for inference routes, the admin key for adapter management.

- No `CAMEO_API_KEYS`: inference routes are open. Otherwise a listed key (or the admin key) is
  needed: 401 when missing or wrong.
- `CAMEO_ADMIN_KEY` set: admin routes need it; a valid user key gets 403, anything else 401.
  Unset: admin routes are accepted from loopback clients only (403 from elsewhere).
Keys are compared in constant time.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from server.api.errors import APIError
from server.settings import Settings

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, keys: list[str]) -> bool:
    if token is None:
        return False
    found = False
    for key in keys:  # no early exit: the time taken does not say which key was close
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def require_user(request: Request) -> None:
    settings = _settings(request)
    keys = settings.api_key_list
    if not keys:
        return
    if not _matches(_bearer(request), keys + ([settings.admin_key] if settings.admin_key else [])):
        raise APIError(401, "a valid API key is required (Authorization: Bearer <key>)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def require_admin(request: Request) -> None:
    settings = _settings(request)
    token = _bearer(request)
    if settings.admin_key:
        if _matches(token, [settings.admin_key]):
            return
        if _matches(token, settings.api_key_list):
            raise APIError(403, "this key may not manage adapters; use the admin key",
                           code="insufficient_permissions")
        raise APIError(401, "the admin key is required (Authorization: Bearer <key>)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    client = request.client.host if request.client else ""
    if client not in LOOPBACK:
        raise APIError(403, "admin routes are accepted from loopback only while no "
                       "CAMEO_ADMIN_KEY is set", code="insufficient_permissions")
