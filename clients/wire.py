"""Cameo's HTTP API on the wire, without a transport: what both Python clients send and read.

Contract: request bodies (chat, adapter upload as a streamed multipart body, card import), auth
headers, the server-sent-events decoder of a chat stream, and the parsing of answers and
errors into `clients.types`, written once for `CameoClient` and `AsyncCameoClient`. Nothing here
opens a connection: the clients' shells do that and hand this module bytes and lines. The only
reads are of local files the request carries (an adapter folder's files, a card file).

It does not parse character cards: a card file goes to the server as it is (`card_file`), and
the server's single card parser reads it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clients.types import CameoError, ChatChunk, Message, ProgressCallback

DEFAULT_URL = "http://127.0.0.1:8000"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # the server's persona names
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
PERSONA_FILE = "persona.json"
_CHUNK = 64 * 1024

MessagesLike = str | Sequence[Mapping[str, Any] | Message]
CardSource = str | os.PathLike[str] | Mapping[str, Any]


class Endpoint:
    """A server's root URL and keys: `api_key` for chat routes, `admin_key` (else `api_key`)
    for admin routes, both sent as `Authorization: Bearer`."""

    def __init__(self, base_url: str, api_key: str | None, admin_key: str | None) -> None:
        self.base_url = root_url(base_url)
        self.api_key = api_key or None
        self.admin_key = admin_key or None

    def _headers(self, admin: bool = False) -> dict[str, str]:
        key = (self.admin_key or self.api_key) if admin else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


def root_url(base_url: str) -> str:
    """The server's root: Cameo's clients add `/v1` themselves, so a trailing one is dropped."""
    url = (base_url or DEFAULT_URL).rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


# ----------------------------------------------------------------------------------------------
# Requests


def chat_body(persona: str, messages: MessagesLike, *, stream: bool, system: str | None = None,
              include_usage: bool = False, **params: Any) -> dict[str, Any]:
    """A chat completion request; parameters left at None are not sent."""
    body: dict[str, Any] = {"model": persona, "messages": _messages(messages, system),
                            "stream": stream}
    body.update({k: v for k, v in params.items() if v is not None})
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def _messages(messages: MessagesLike, system: str | None) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        built: list[dict[str, Any]] = [{"role": "user", "content": messages}]
    else:
        built = [m.to_dict() if isinstance(m, Message) else dict(m) for m in messages]
    if system:
        built.insert(0, {"role": "system", "content": system})
    if not built:
        raise ValueError("at least one message is needed")
    return built


def import_body(card: CardSource, name: str | None, adapter: str | None,
                replace: bool) -> dict[str, Any]:
    """`POST /v1/personas/import`: a card object as `card`, a card file (.png or .json) as
    `card_file`, its bytes in base64, unread."""
    if name:
        check_name(name)
    body: dict[str, Any] = {"replace": replace}
    if isinstance(card, Mapping):
        body["card"] = dict(card)
    else:
        body["card_file"] = base64.b64encode(Path(card).read_bytes()).decode("ascii")
    if name:
        body["name"] = name
    if adapter:
        body["adapter"] = adapter
    return body


def upload_body(directory: str | os.PathLike[str], name: str | None, replace: bool,
                force: bool) -> Multipart:
    """`POST /v1/adapters`: a PEFT adapter folder (with its persona.json when there is one)."""
    name = name or Path(directory).resolve().name
    check_name(name)
    fields = {"name": name, "replace": "true" if replace else "false",
              "force": "true" if force else "false"}
    return Multipart(fields, adapter_parts(directory))


def check_name(name: str) -> None:
    """Refuse a persona name the server would refuse, before anything is sent (the server's
    rule, `[a-z0-9][a-z0-9._-]{0,63}` as a whole string; the server checks it again)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"persona name {name[:80]!r} must match {NAME_PATTERN.pattern}: "
                         "lower-case letters, digits, '.', '_' and '-', starting with a letter "
                         "or digit, at most 64 characters")


def adapter_parts(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """The form fields and files of an adapter folder; FileNotFoundError names what is missing."""
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


class Multipart:
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


# ----------------------------------------------------------------------------------------------
# Answers


def answer(status: int, content: bytes, reason: str) -> Any:
    """An answer's JSON (None for an empty body); an error status raises its CameoError."""
    if status >= 400:
        raise error_from(status, content, reason)
    return json.loads(content) if content else None


def error_from(status: int, content: bytes, reason: str) -> CameoError:
    """The CameoError of an HTTP error answer: its `{"error": {...}}`, else its text."""
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        body = None
    fallback = content.decode("utf-8", "replace").strip()[:500] if body is None else ""
    return CameoError.from_body(status, body, fallback or reason or "")


def list_data(data: Any) -> list[Any]:
    """The items of a list answer (`{"object": "list", "data": [...]}`)."""
    return list(data.get("data") or []) if isinstance(data, dict) else list(data or [])


class ChatStream:
    """A chat completion stream's text lines in, `ChatChunk`s out; `done` after `[DONE]`.

    An event that carries `{"error": ...}` raises its CameoError; an unreadable one raises a
    CameoError with code `bad_stream`.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        self.done = False
        self._data: list[str] = []

    def feed(self, line: str) -> ChatChunk | None:
        """The chunk an event completed by `line`, if any (check `done` after each line)."""
        line = line.rstrip("\r")
        if not line:
            return self.close()
        if line.startswith(":"):  # a comment (": ping")
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def close(self) -> ChatChunk | None:
        """The event still buffered when the stream ends without a blank line, if any."""
        if not self._data or self.done:
            return None
        data, self._data = "\n".join(self._data), []
        return self._event(data)

    def _event(self, data: str) -> ChatChunk | None:
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as exc:
            raise CameoError(self.status, "bad_stream",
                             f"the server sent an unreadable event: {data!r}") from exc
        if isinstance(payload, dict) and "error" in payload:
            raise CameoError.from_body(500, payload)
        return ChatChunk.from_json(payload)
