"""`AsyncCameoClient`: the same API as `CameoClient`, for asyncio.

    async with AsyncCameoClient("http://127.0.0.1:8000") as cameo:
        print((await cameo.chat("alpha", "Hello!")).text)
        async for delta in cameo.stream_text("alpha", "Tell me a story."):
            print(delta, end="", flush=True)

This module is only the asyncio transport (httpx.AsyncClient); requests, streams and answers
are built and parsed by `clients.wire`, so the two clients cannot drift apart. See
`clients.client` for keys and errors.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from clients import wire
from clients.types import (
    Adapter,
    CameoConnectionError,
    CameoError,
    ChatChunk,
    ChatResult,
    Deleted,
    Persona,
    PersonaDetails,
    ProgressCallback,
)
from clients.wire import DEFAULT_URL, CardSource, MessagesLike


class AsyncCameoClient(wire.Endpoint):
    """The same API for asyncio; use `async with` or `await close()`."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 admin_key: str | None = None, timeout: float | None = 300.0,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key, admin_key)
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncCameoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _send(self, method: str, path: str, *, admin: bool = False, **kwargs: Any) -> Any:
        headers = {**self._headers(admin), **kwargs.pop("headers", {})}
        try:
            response = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise CameoConnectionError(self.base_url, str(exc) or type(exc).__name__) from exc
        return wire.answer(response.status_code, response.content, response.reason_phrase)

    async def health(self) -> bool:
        try:
            return bool(await self._send("GET", "/health"))
        except CameoError:
            return False

    async def ready(self) -> bool:
        try:
            await self._send("GET", "/ready")
        except CameoError:
            return False
        return True

    async def models(self) -> list[Persona]:
        data = await self._send("GET", "/v1/models")
        return [Persona.from_json(item) for item in wire.list_data(data)]

    async def personas(self, include_base: bool = False) -> list[Persona]:
        return [p for p in await self.models() if include_base or not p.is_base]

    async def persona_cards(self) -> list[PersonaDetails]:
        data = await self._send("GET", "/v1/personas", admin=True)
        return [PersonaDetails.from_json(item) for item in wire.list_data(data)]

    async def persona(self, name: str) -> PersonaDetails:
        return PersonaDetails.from_json(
            await self._send("GET", f"/v1/personas/{name}", admin=True))

    async def chat(self, persona: str, messages: MessagesLike, *, system: str | None = None,
                   max_tokens: int | None = None, temperature: float | None = None,
                   top_p: float | None = None, seed: int | None = None,
                   stop: str | list[str] | None = None, **extra: Any) -> ChatResult:
        body = wire.chat_body(persona, messages, stream=False, system=system,
                              max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                              seed=seed, stop=stop, **extra)
        return ChatResult.from_json(await self._send("POST", "/v1/chat/completions", json=body))

    async def stream(self, persona: str, messages: MessagesLike, *, system: str | None = None,
                     max_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, seed: int | None = None,
                     stop: str | list[str] | None = None, include_usage: bool = False,
                     **extra: Any) -> AsyncGenerator[ChatChunk, None]:
        body = wire.chat_body(persona, messages, stream=True, system=system,
                              include_usage=include_usage, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                              **extra)
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body,
                                         headers=self._headers()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise wire.error_from(response.status_code, response.content,
                                          response.reason_phrase)
                decoder = wire.ChatStream(response.status_code)
                async for line in response.aiter_lines():
                    chunk = decoder.feed(line)
                    if decoder.done:
                        return
                    if chunk is not None:
                        yield chunk
                last = decoder.close()
                if last is not None:
                    yield last
        except httpx.TransportError as exc:
            raise CameoConnectionError(self.base_url, str(exc) or type(exc).__name__) from exc

    async def stream_text(self, persona: str, messages: MessagesLike,
                          **params: Any) -> AsyncGenerator[str, None]:
        async for chunk in self.stream(persona, messages, **params):
            if chunk.text:
                yield chunk.text

    async def adapters(self) -> list[Adapter]:
        data = await self._send("GET", "/v1/adapters", admin=True)
        return [Adapter.from_json(item) for item in wire.list_data(data)]

    async def adapter(self, name: str) -> Adapter:
        return Adapter.from_json(await self._send("GET", f"/v1/adapters/{name}", admin=True))

    async def upload(self, directory: str | os.PathLike[str], name: str | None = None, *,
                     replace: bool = False, force: bool = False,
                     progress: ProgressCallback | None = None) -> Adapter:
        body = wire.upload_body(directory, name, replace, force)
        data = await self._send("POST", "/v1/adapters", admin=True, headers=body.headers,
                                content=body.achunks(progress))
        return Adapter.from_json(data)

    async def delete(self, name: str) -> Deleted:
        data = await self._send("DELETE", f"/v1/adapters/{name}", admin=True)
        return Deleted.from_json(data, name)

    async def import_card(self, card: CardSource, *, name: str | None = None,
                          adapter: str | None = None, replace: bool = False) -> PersonaDetails:
        data = await self._send("POST", "/v1/personas/import", admin=True,
                                json=wire.import_body(card, name, adapter, replace))
        return PersonaDetails.from_json(data)
