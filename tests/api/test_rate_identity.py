"""The rate-limit bucket of a request (`server.api.auth.caller_identity`) over real HTTP.

With keys configured the bucket is the parsed key, however `Authorization` spells it; without
keys it is the client's address, whatever `Authorization` says. Requests name a model that does
not exist: the rate check comes first, so each one costs a token (404) and the engine nothing.
"""

from __future__ import annotations

import uuid

import httpx

from tests.robustness.conftest import ServerFactory

PER_MINUTE = 3
BODY = {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]}


def _chat(url: str, authorization: str | None) -> int:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=headers,
                      timeout=30).status_code


def test_spellings_of_one_key_share_a_bucket(serve: ServerFactory) -> None:
    with serve(api_keys="key-one,key-two", rate_limit_per_minute=PER_MINUTE) as (_, url):
        spellings = ["Bearer key-one", "bearer key-one", "Bearer  key-one", "BEARER\tkey-one",
                     "bEaReR key-one"]
        statuses = [_chat(url, spelling) for spelling in spellings]
        assert statuses == [404] * PER_MINUTE + [429] * (len(spellings) - PER_MINUTE)
        assert _chat(url, "Bearer key-two") == 404  # another key: its own bucket
        assert _chat(url, "Bearer wrong") == 401  # not a key at all: refused before counting
        assert _chat(url, "bearer  key-one") == 429


def test_without_keys_every_header_is_the_clients_bucket(serve: ServerFactory) -> None:
    with serve(rate_limit_per_minute=PER_MINUTE) as (_, url):
        headers = [f"Bearer {uuid.uuid4().hex}" for _ in range(PER_MINUTE)]
        assert [_chat(url, h) for h in headers] == [404] * PER_MINUTE
        for fresh in (f"Bearer {uuid.uuid4().hex}", "Basic abc", uuid.uuid4().hex, None):
            assert _chat(url, fresh) == 429, fresh
