"""What the Python clients return and raise: frozen dataclasses built from the API's JSON.

Contract: each result type has `from_json(data)` that reads the server's JSON object leniently
(missing fields take their defaults, an unknown field is kept in `raw` only), and errors are
`CameoError(status, code, message, param)`, with `CameoConnectionError` (status 0) for a server
that cannot be reached. Nothing here does I/O or knows a route; `wire.py` maps routes to types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(sent_bytes, total_bytes)` while an upload's body is sent."""


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
            return cls(status, opt_str(error.get("code")),
                       str(error.get("message") or fallback or f"HTTP {status}"),
                       opt_str(error.get("param")), opt_str(error.get("type")))
        if isinstance(body, dict) and isinstance(body.get("detail"), str):  # a plain FastAPI error
            return cls(status, None, body["detail"])
        return cls(status, None, fallback or f"HTTP {status}")


class CameoConnectionError(CameoError):
    """The server could not be reached (refused, timed out, name not resolved)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "connection_error", f"cannot reach {url}: {reason}")
        self.url = url


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
            parent=opt_str(data.get("parent")),
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
            adapter=opt_str(adapter),
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
            version=opt_int(data.get("version")),
            versions=tuple(data.get("versions") or ()),
            rank=opt_int(data.get("rank")),
            alpha=float(data["alpha"]) if data.get("alpha") is not None else None,
            target_modules=tuple(str(m) for m in data.get("target_modules") or ()),
            base_model=opt_str(data.get("base_model")),
            created=int(data.get("created") or 0),
            persona=data.get("persona") if isinstance(data.get("persona"), Mapping) else None,
            raw=dict(data),
        )


@dataclass(frozen=True)
class Deleted:
    id: str
    deleted: bool
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, name: str) -> Deleted:
        data = data or {}
        return cls(id=str(data.get("id") or name), deleted=bool(data.get("deleted")),
                   raw=data)


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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatResult:
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        return cls(id=str(data.get("id") or ""), model=str(data.get("model") or ""),
                   text=str(message.get("content") or ""),
                   finish_reason=choice.get("finish_reason"),
                   usage=Usage.from_json(data.get("usage")), raw=dict(data))


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


def opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def opt_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
