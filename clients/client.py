"""Python clients for a Cameo server: `CameoClient` (sync, here) and `AsyncCameoClient` (asyncio).

    from clients.client import CameoClient

    with CameoClient("http://127.0.0.1:8000", api_key="...") as cameo:
        for persona in cameo.personas():
            print(persona.id, persona.description)
        print(cameo.chat("alpha", "Hello!", max_tokens=32).text)
        for delta in cameo.stream_text("alpha", "Tell me a story."):
            print(delta, end="", flush=True)

Chat routes send `api_key` as `Authorization: Bearer`; admin routes (upload, delete, card import)
send `admin_key`, or `api_key` when no admin key is given. Every error the API reports is raised
as `CameoError(status, code, message, param)`; a server that cannot be reached raises
`CameoConnectionError` (a `CameoError` with status 0).

This module is only the blocking transport (httpx): requests are built and answers parsed by
`clients.wire`, into the types of `clients.types`. The names below are re-exported so that
`from clients.client import ...` reaches the whole client API, the async twin included.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import httpx

from clients import wire
from clients.async_client import AsyncCameoClient
from clients.types import (
    Adapter,
    CameoConnectionError,
    CameoError,
    ChatChunk,
    ChatResult,
    Deleted,
    Message,
    Persona,
    PersonaDetails,
    ProgressCallback,
    Usage,
)
from clients.wire import DEFAULT_URL, NAME_PATTERN, CardSource, MessagesLike, check_name

__all__ = [
    "DEFAULT_URL",
    "NAME_PATTERN",
    "Adapter",
    "AsyncCameoClient",
    "CameoClient",
    "CameoConnectionError",
    "CameoError",
    "ChatChunk",
    "ChatResult",
    "Deleted",
    "Message",
    "MessagesLike",
    "Persona",
    "PersonaDetails",
    "ProgressCallback",
    "Usage",
    "check_name",
]


class CameoClient(wire.Endpoint):
    """A blocking client; use it as a context manager or call `close()`."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 admin_key: str | None = None, timeout: float | None = 300.0,
                 http: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key, admin_key)
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> CameoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _send(self, method: str, path: str, *, admin: bool = False, **kwargs: Any) -> Any:
        headers = {**self._headers(admin), **kwargs.pop("headers", {})}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise CameoConnectionError(self.base_url, str(exc) or type(exc).__name__) from exc
        return wire.answer(response.status_code, response.content, response.reason_phrase)

    # Reading
    def health(self) -> bool:
        try:
            return bool(self._send("GET", "/health"))
        except CameoError:
            return False

    def ready(self) -> bool:
        try:
            self._send("GET", "/ready")
        except CameoError:
            return False
        return True

    def models(self) -> list[Persona]:
        """Every entry of `/v1/models`: the base model first, then the personas."""
        return [Persona.from_json(m) for m in wire.list_data(self._send("GET", "/v1/models"))]

    def personas(self, include_base: bool = False) -> list[Persona]:
        return [p for p in self.models() if include_base or not p.is_base]

    def persona_cards(self) -> list[PersonaDetails]:
        """Every persona's whole card (`GET /v1/personas`)."""
        data = self._send("GET", "/v1/personas", admin=True)
        return [PersonaDetails.from_json(item) for item in wire.list_data(data)]

    def persona(self, name: str) -> PersonaDetails:
        return PersonaDetails.from_json(self._send("GET", f"/v1/personas/{name}", admin=True))

    # Chatting
    def chat(self, persona: str, messages: MessagesLike, *, system: str | None = None,
             max_tokens: int | None = None, temperature: float | None = None,
             top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None, **extra: Any) -> ChatResult:
        """One completion. `messages` is a user message's text or OpenAI-style messages."""
        body = wire.chat_body(persona, messages, stream=False, system=system,
                              max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                              seed=seed, stop=stop, **extra)
        return ChatResult.from_json(self._send("POST", "/v1/chat/completions", json=body))

    def stream(self, persona: str, messages: MessagesLike, *, system: str | None = None,
               max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, seed: int | None = None,
               stop: str | list[str] | None = None, include_usage: bool = False,
               **extra: Any) -> Generator[ChatChunk, None, None]:
        """Streamed completion chunks. Leaving the loop early closes the stream, which stops
        the generation on the server."""
        body = wire.chat_body(persona, messages, stream=True, system=system,
                              include_usage=include_usage, max_tokens=max_tokens,
                              temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                              **extra)
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body,
                                   headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    raise wire.error_from(response.status_code, response.content,
                                          response.reason_phrase)
                decoder = wire.ChatStream(response.status_code)
                for line in response.iter_lines():
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

    def stream_text(self, persona: str, messages: MessagesLike,
                    **params: Any) -> Generator[str, None, None]:
        """Only the text deltas of `stream`."""
        for chunk in self.stream(persona, messages, **params):
            if chunk.text:
                yield chunk.text

    # Administration
    def adapters(self) -> list[Adapter]:
        data = self._send("GET", "/v1/adapters", admin=True)
        return [Adapter.from_json(item) for item in wire.list_data(data)]

    def adapter(self, name: str) -> Adapter:
        return Adapter.from_json(self._send("GET", f"/v1/adapters/{name}", admin=True))

    def upload(self, directory: str | os.PathLike[str], name: str | None = None, *,
               replace: bool = False, force: bool = False,
               progress: ProgressCallback | None = None) -> Adapter:
        """Upload a PEFT adapter folder (with its persona.json when there is one)."""
        body = wire.upload_body(directory, name, replace, force)
        data = self._send("POST", "/v1/adapters", admin=True, headers=body.headers,
                          content=body.chunks(progress))
        return Adapter.from_json(data)

    def delete(self, name: str) -> Deleted:
        return Deleted.from_json(self._send("DELETE", f"/v1/adapters/{name}", admin=True), name)

    def import_card(self, card: CardSource, *, name: str | None = None,
                    adapter: str | None = None, replace: bool = False) -> PersonaDetails:
        """Import a SillyTavern character card as a persona: a card object (dict), or a card
        file (.json, or a .png with the card in it) that the server reads."""
        data = self._send("POST", "/v1/personas/import", admin=True,
                          json=wire.import_body(card, name, adapter, replace))
        return PersonaDetails.from_json(data)

