"""Python clients for a Cameo server: `CameoClient` (sync) and `AsyncCameoClient` (asyncio).

Both speak Cameo's HTTP API through httpx and return typed results (dataclasses):

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
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import uuid
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # the server's persona names

__all__ = [
    "Adapter",
    "AsyncCameoClient",
    "CameoClient",
    "CameoConnectionError",
    "CameoError",
    "ChatChunk",
    "ChatResult",
    "Deleted",
    "Message",
    "Persona",
    "PersonaDetails",
    "ProgressCallback",
    "Usage",
    "load_card",
]

DEFAULT_URL = "http://127.0.0.1:8000"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PERSONA_FILE = "persona.json"
_CHUNK = 64 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(sent_bytes, total_bytes)` while an upload's body is sent."""


# ----------------------------------------------------------------------------------------------
# Errors


class CameoError(Exception):
    """An error the Cameo API answered with (`{"error": {...}}`), or one on the way there."""

    def __init__(self, status: int, code: str | None, message: str, param: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type

    def __str__(self) -> str:
        where = [f"HTTP {self.status}"] if self.status else []
        if self.code:
            where.append(self.code)
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def __repr__(self) -> str:
        return (f"CameoError(status={self.status!r}, code={self.code!r}, "
                f"message={self.message!r}, param={self.param!r})")

    @classmethod
    def from_body(cls, status: int, body: Any, fallback: str = "") -> CameoError:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(status, _opt_str(error.get("code")),
                       str(error.get("message") or fallback or f"HTTP {status}"),
                       _opt_str(error.get("param")), _opt_str(error.get("type")))
        if isinstance(body, dict) and isinstance(body.get("detail"), str):  # a plain FastAPI error
            return cls(status, None, body["detail"])
        return cls(status, None, fallback or f"HTTP {status}")


class CameoConnectionError(CameoError):
    """The server could not be reached (refused, timed out, name not resolved)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "connection_error", f"cannot reach {url}: {reason}")
        self.url = url


# ----------------------------------------------------------------------------------------------
# Typed results


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Usage | None:
        if not data:
            return None
        return cls(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0),
                   int(data.get("total_tokens") or 0))


@dataclass(frozen=True)
class Persona:
    """One entry of `GET /v1/models`: a persona, or the base model itself (`is_base`)."""

    id: str
    display_name: str
    description: str = ""
    greeting: str = ""
    tags: tuple[str, ...] = ()
    parent: str | None = None
    created: int = 0
    owned_by: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_base(self) -> bool:
        return self.parent is None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Persona:
        return cls(
            id=str(data["id"]),
            display_name=str(data.get("display_name") or data["id"]),
            description=str(data.get("description") or ""),
            greeting=str(data.get("greeting") or ""),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            parent=_opt_str(data.get("parent")),
            created=int(data.get("created") or 0),
            owned_by=str(data.get("owned_by") or ""),
            raw=dict(data),
        )


@dataclass(frozen=True)
class PersonaDetails:
    """`GET /v1/personas/{name}` and `POST /v1/personas/import`: the whole persona card."""

    id: str
    display_name: str
    description: str = ""
    greeting: str = ""
    tags: tuple[str, ...] = ()
    system_prompt: str = ""
    example_messages: tuple[Any, ...] = ()
    sampling: Mapping[str, float] = field(default_factory=dict)
    adapter: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PersonaDetails:
        examples = data.get("example_messages") or ()
        if isinstance(examples, str):
            examples = (examples,)
        adapter = data.get("adapter")
        if isinstance(adapter, Mapping):  # tolerate an embedded adapter object
            adapter = adapter.get("name") or adapter.get("id")
        name = str(data.get("id") or data.get("name") or "")
        return cls(
            id=name,
            display_name=str(data.get("display_name") or name),
            description=str(data.get("description") or ""),
            greeting=str(data.get("greeting") or ""),
            tags=tuple(str(t) for t in data.get("tags") or ()),
            system_prompt=str(data.get("system_prompt") or ""),
            example_messages=tuple(examples),
            sampling=dict(data.get("sampling") or {}),
            adapter=_opt_str(adapter),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Adapter:
    """An adapter object of the admin API (`/v1/adapters`)."""

    id: str
    name: str
    version: int | None = None
    versions: tuple[Any, ...] = ()
    rank: int | None = None
    alpha: float | None = None
    target_modules: tuple[str, ...] = ()
    base_model: str | None = None
    created: int = 0
    persona: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Adapter:
        name = str(data.get("name") or data.get("id") or "")
        return cls(
            id=str(data.get("id") or name),
            name=name,
            version=_opt_int(data.get("version")),
            versions=tuple(data.get("versions") or ()),
            rank=_opt_int(data.get("rank")),
            alpha=float(data["alpha"]) if data.get("alpha") is not None else None,
            target_modules=tuple(str(m) for m in data.get("target_modules") or ()),
            base_model=_opt_str(data.get("base_model")),
            created=int(data.get("created") or 0),
            persona=data.get("persona") if isinstance(data.get("persona"), Mapping) else None,
            raw=dict(data),
        )


@dataclass(frozen=True)
class Deleted:
    id: str
    deleted: bool
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ChatResult:
    """A finished chat completion."""

    id: str
    model: str
    text: str
    finish_reason: str | None
    usage: Usage | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ChatChunk:
    """One streamed event: `text` is the new text (maybe empty), `finish_reason` on the last."""

    id: str
    model: str
    text: str = ""
    role: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatChunk:
        choices = data.get("choices") or []
        choice = choices[0] if choices else {}
        delta = choice.get("delta") or {}
        return cls(id=str(data.get("id") or ""), model=str(data.get("model") or ""),
                   text=str(delta.get("content") or ""), role=delta.get("role"),
                   finish_reason=choice.get("finish_reason"),
                   usage=Usage.from_json(data.get("usage")), raw=dict(data))


# ----------------------------------------------------------------------------------------------
# Character cards


def load_card(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A Character Card V2 object from a dict, a `.json` file or a SillyTavern `.png` card.

    A V1 card (flat `name`, `description`, `first_mes`, ...) is wrapped into V2's shape.
    """
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = Path(source)
        raw = path.read_bytes()
        if raw.startswith(b"\x89PNG\r\n\x1a\n"):
            data = _card_from_png(raw, path)
        else:
            try:
                data = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path} is not a JSON character card: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("a character card is a JSON object")
    if data.get("spec") in ("chara_card_v2", "chara_card_v3") and isinstance(data.get("data"),
                                                                              dict):
        return data
    if "name" in data or "first_mes" in data or "description" in data:
        fields = ("name", "description", "personality", "scenario", "first_mes", "mes_example",
                  "system_prompt", "post_history_instructions", "tags", "creator_notes",
                  "alternate_greetings", "creator", "character_version", "extensions")
        return {"spec": "chara_card_v2", "spec_version": "2.0",
                "data": {k: data[k] for k in fields if k in data}}
    raise ValueError("not a character card: expected spec 'chara_card_v2' with a data object")


def _card_from_png(raw: bytes, path: Path) -> Any:
    """The `chara` (V2) or `ccv3` (V3) tEXt chunk of a PNG card: base64 of the card's JSON."""
    found: dict[str, bytes] = {}
    offset = 8
    while offset + 8 <= len(raw):
        (length,) = struct.unpack(">I", raw[offset:offset + 4])
        kind = raw[offset + 4:offset + 8]
        body = raw[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt" and b"\x00" in body:
            key, _, value = body.partition(b"\x00")
            found[key.decode("latin-1").lower()] = value
        elif kind == b"zTXt" and b"\x00" in body:
            key, _, rest = body.partition(b"\x00")
            found[key.decode("latin-1").lower()] = zlib.decompress(rest[1:])
        elif kind == b"IEND":
            break
    text = found.get("chara") or found.get("ccv3")
    if not text:
        raise ValueError(f"{path} is a PNG without a character card (no 'chara' text chunk)")
    try:
        return json.loads(base64.b64decode(text).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: the PNG's card is not valid base64 JSON: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Shared request building and parsing


MessagesLike = str | Sequence[Mapping[str, Any] | Message]


def _messages(messages: MessagesLike, system: str | None = None) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        built: list[dict[str, Any]] = [{"role": "user", "content": messages}]
    else:
        built = [m.to_dict() if isinstance(m, Message) else dict(m) for m in messages]
    if system:
        built.insert(0, {"role": "system", "content": system})
    if not built:
        raise ValueError("at least one message is needed")
    return built


def _chat_body(persona: str, messages: MessagesLike, stream: bool, params: dict[str, Any],
               system: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": persona, "messages": _messages(messages, system),
                            "stream": stream}
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def _chat_result(data: Mapping[str, Any]) -> ChatResult:
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return ChatResult(id=str(data.get("id") or ""), model=str(data.get("model") or ""),
                      text=str(message.get("content") or ""),
                      finish_reason=choice.get("finish_reason"),
                      usage=Usage.from_json(data.get("usage")), raw=dict(data))


class _SSEParser:
    """Server-sent events from text lines: yields each event's data (multi-line data joined)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def _event(data: str, status: int) -> ChatChunk | None:
    """A parsed stream event; None at `[DONE]`; raises the error an event carries."""
    if data.strip() == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CameoError(status, "bad_stream", f"the server sent an unreadable event: {data!r}"
                         ) from exc
    if isinstance(payload, dict) and "error" in payload:
        error = CameoError.from_body(500, payload)
        raise error
    return ChatChunk.from_json(payload)


def _error_from_response(response: httpx.Response) -> CameoError:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    fallback = response.text.strip()[:500] if body is None else ""
    return CameoError.from_body(response.status_code, body,
                                fallback or response.reason_phrase or "")


def _adapter_parts(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    parts = []
    for field_name, filename in (("adapter_config", ADAPTER_FILES[0]),
                                 ("adapter_model", ADAPTER_FILES[1])):
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {filename} (a PEFT LoRA adapter folder "
                                    f"holds {' and '.join(ADAPTER_FILES)})")
        parts.append((field_name, path))
    if (folder / PERSONA_FILE).is_file():
        parts.append(("persona", folder / PERSONA_FILE))
    return parts


class _Multipart:
    """A multipart/form-data body streamed from files, with its exact length for progress."""

    def __init__(self, fields: Mapping[str, str], files: Sequence[tuple[str, Path]]) -> None:
        self.boundary = f"cameo-{uuid.uuid4().hex}"
        self._segments: list[bytes | Path] = []
        for name, value in fields.items():
            self._segments.append(self._head(name) + b"\r\n" + value.encode() + b"\r\n")
        for name, path in files:
            kind = "application/json" if path.suffix == ".json" else "application/octet-stream"
            self._segments.append(self._head(name, path.name, kind) + b"\r\n")
            self._segments.append(path)
            self._segments.append(b"\r\n")
        self._segments.append(f"--{self.boundary}--\r\n".encode())
        self.total = sum(s.stat().st_size if isinstance(s, Path) else len(s)
                         for s in self._segments)

    def _head(self, name: str, filename: str | None = None, kind: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n"
        if kind:
            head += f"Content-Type: {kind}\r\n"
        return head.encode()

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": f"multipart/form-data; boundary={self.boundary}",
                "Content-Length": str(self.total)}

    def chunks(self, progress: ProgressCallback | None) -> Iterator[bytes]:
        sent = 0
        if progress:
            progress(0, self.total)
        for segment in self._segments:
            pieces: Iterable[bytes] = [segment] if isinstance(segment, bytes) else \
                _read_chunks(segment)
            for piece in pieces:
                sent += len(piece)
                yield piece
                if progress:
                    progress(sent, self.total)

    async def achunks(self, progress: ProgressCallback | None) -> AsyncIterator[bytes]:
        for piece in self.chunks(progress):
            yield piece


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(_CHUNK):
            yield piece


def _upload_fields(name: str, replace: bool, force: bool) -> dict[str, str]:
    check_name(name)
    return {"name": name, "replace": "true" if replace else "false",
            "force": "true" if force else "false"}


def _import_body(card: Any, name: str | None, adapter: str | None,
                 replace: bool) -> dict[str, Any]:
    if name:
        check_name(name)
    body: dict[str, Any] = {"card": load_card(card), "replace": replace}
    if name:
        body["name"] = name
    if adapter:
        body["adapter"] = adapter
    return body


def check_name(name: str) -> None:
    """Refuse a persona name the server would refuse, before anything is sent (the server's
    rule, `[a-z0-9][a-z0-9._-]{0,63}` as a whole string; the server checks it again)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"persona name {name[:80]!r} must match {NAME_PATTERN.pattern}: "
                         "lower-case letters, digits, '.', '_' and '-', starting with a letter "
                         "or digit, at most 64 characters")


def _list_data(data: Any) -> list[Any]:
    return list(data.get("data") or []) if isinstance(data, dict) else list(data or [])


def _root(base_url: str) -> str:
    url = (base_url or DEFAULT_URL).rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


class _Common:
    def __init__(self, base_url: str, api_key: str | None, admin_key: str | None) -> None:
        self.base_url = _root(base_url)
        self.api_key = api_key or None
        self.admin_key = admin_key or None

    def _headers(self, admin: bool = False) -> dict[str, str]:
        key = (self.admin_key or self.api_key) if admin else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


# ----------------------------------------------------------------------------------------------
# Sync client


class CameoClient(_Common):
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
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.json() if response.content else None

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
        return [Persona.from_json(item) for item in _list_data(self._send("GET", "/v1/models"))]

    def personas(self, include_base: bool = False) -> list[Persona]:
        return [p for p in self.models() if include_base or not p.is_base]

    def persona_cards(self) -> list[PersonaDetails]:
        """Every persona's whole card (`GET /v1/personas`)."""
        data = self._send("GET", "/v1/personas", admin=True)
        return [PersonaDetails.from_json(item) for item in _list_data(data)]

    def persona(self, name: str) -> PersonaDetails:
        return PersonaDetails.from_json(self._send("GET", f"/v1/personas/{name}", admin=True))

    # Chatting
    def chat(self, persona: str, messages: MessagesLike, *, system: str | None = None,
             max_tokens: int | None = None, temperature: float | None = None,
             top_p: float | None = None, seed: int | None = None,
             stop: str | list[str] | None = None, **extra: Any) -> ChatResult:
        """One completion. `messages` is a user message's text or OpenAI-style messages."""
        body = _chat_body(persona, messages, False, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
            **extra), system)
        return _chat_result(self._send("POST", "/v1/chat/completions", json=body))

    def stream(self, persona: str, messages: MessagesLike, *, system: str | None = None,
               max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, seed: int | None = None,
               stop: str | list[str] | None = None, include_usage: bool = False,
               **extra: Any) -> Generator[ChatChunk, None, None]:
        """Streamed completion chunks. Leaving the loop early closes the stream, which stops
        the generation on the server."""
        body = _chat_body(persona, messages, True, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
            **extra), system)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body,
                                   headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                parser = _SSEParser()
                for line in response.iter_lines():
                    data = parser.feed(line)
                    if data is None:
                        continue
                    chunk = _event(data, response.status_code)
                    if chunk is None:
                        return
                    yield chunk
                tail = parser.flush()
                last = _event(tail, response.status_code) if tail is not None else None
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
        return [Adapter.from_json(item) for item in _list_data(data)]

    def adapter(self, name: str) -> Adapter:
        return Adapter.from_json(self._send("GET", f"/v1/adapters/{name}", admin=True))

    def upload(self, directory: str | os.PathLike[str], name: str | None = None, *,
               replace: bool = False, force: bool = False,
               progress: ProgressCallback | None = None) -> Adapter:
        """Upload a PEFT adapter folder (with its persona.json when there is one)."""
        name = name or Path(directory).resolve().name
        body = _Multipart(_upload_fields(name, replace, force), _adapter_parts(directory))
        data = self._send("POST", "/v1/adapters", admin=True, headers=body.headers,
                          content=body.chunks(progress))
        return Adapter.from_json(data)

    def delete(self, name: str) -> Deleted:
        data = self._send("DELETE", f"/v1/adapters/{name}", admin=True) or {}
        return Deleted(id=str(data.get("id") or name), deleted=bool(data.get("deleted")),
                       raw=data)

    def import_card(self, card: str | os.PathLike[str] | Mapping[str, Any], *,
                    name: str | None = None, adapter: str | None = None,
                    replace: bool = False) -> PersonaDetails:
        """Import a SillyTavern Character Card V2 (dict, .json or .png) as a persona."""
        data = self._send("POST", "/v1/personas/import", admin=True,
                          json=_import_body(card, name, adapter, replace))
        return PersonaDetails.from_json(data)


# ----------------------------------------------------------------------------------------------
# Async client


class AsyncCameoClient(_Common):
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
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response.json() if response.content else None

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
        return [Persona.from_json(item) for item in _list_data(data)]

    async def personas(self, include_base: bool = False) -> list[Persona]:
        return [p for p in await self.models() if include_base or not p.is_base]

    async def persona_cards(self) -> list[PersonaDetails]:
        data = await self._send("GET", "/v1/personas", admin=True)
        return [PersonaDetails.from_json(item) for item in _list_data(data)]

    async def persona(self, name: str) -> PersonaDetails:
        return PersonaDetails.from_json(
            await self._send("GET", f"/v1/personas/{name}", admin=True))

    async def chat(self, persona: str, messages: MessagesLike, *, system: str | None = None,
                   max_tokens: int | None = None, temperature: float | None = None,
                   top_p: float | None = None, seed: int | None = None,
                   stop: str | list[str] | None = None, **extra: Any) -> ChatResult:
        body = _chat_body(persona, messages, False, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
            **extra), system)
        return _chat_result(await self._send("POST", "/v1/chat/completions", json=body))

    async def stream(self, persona: str, messages: MessagesLike, *, system: str | None = None,
                     max_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, seed: int | None = None,
                     stop: str | list[str] | None = None, include_usage: bool = False,
                     **extra: Any) -> AsyncGenerator[ChatChunk, None]:
        body = _chat_body(persona, messages, True, dict(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
            **extra), system)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body,
                                         headers=self._headers()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error_from_response(response)
                parser = _SSEParser()
                async for line in response.aiter_lines():
                    data = parser.feed(line)
                    if data is None:
                        continue
                    chunk = _event(data, response.status_code)
                    if chunk is None:
                        return
                    yield chunk
                tail = parser.flush()
                last = _event(tail, response.status_code) if tail is not None else None
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
        return [Adapter.from_json(item) for item in _list_data(data)]

    async def adapter(self, name: str) -> Adapter:
        return Adapter.from_json(await self._send("GET", f"/v1/adapters/{name}", admin=True))

    async def upload(self, directory: str | os.PathLike[str], name: str | None = None, *,
                     replace: bool = False, force: bool = False,
                     progress: ProgressCallback | None = None) -> Adapter:
        name = name or Path(directory).resolve().name
        body = _Multipart(_upload_fields(name, replace, force), _adapter_parts(directory))
        data = await self._send("POST", "/v1/adapters", admin=True, headers=body.headers,
                                content=body.achunks(progress))
        return Adapter.from_json(data)

    async def delete(self, name: str) -> Deleted:
        data = await self._send("DELETE", f"/v1/adapters/{name}", admin=True) or {}
        return Deleted(id=str(data.get("id") or name), deleted=bool(data.get("deleted")),
                       raw=data)

    async def import_card(self, card: str | os.PathLike[str] | Mapping[str, Any], *,
                          name: str | None = None, adapter: str | None = None,
                          replace: bool = False) -> PersonaDetails:
        data = await self._send("POST", "/v1/personas/import", admin=True,
                                json=_import_body(card, name, adapter, replace))
        return PersonaDetails.from_json(data)
