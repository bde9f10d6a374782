"""The OpenAI-compatible request and response bodies (pydantic), and nothing else.

Requests accept unknown extra keys (frontends send many sampling knobs) and ignore what the
engine does not implement. Ranges follow OpenAI's documented limits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="Only 1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what torch.manual_seed takes
    ignore_eos: bool = False
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        if any(len(s) > 256 for s in stops):
            raise ValueError("stop strings are at most 256 characters")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "cameo"
    root: str | None = None
    parent: str | None = None
    display_name: str | None = None
    description: str | None = None
    greeting: str | None = None
    tags: list[str] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=False)


class FileInfo(BaseModel):
    name: str
    size: int
    sha256: str


class VersionInfo(BaseModel):
    version: int
    created: int
    kind: Literal["adapter", "prompt"]
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list)
    base_model: str | None = None
    files: list[FileInfo] = Field(default_factory=list)


class Residency(BaseModel):
    device_slot: int | None = None
    host: bool = False
    merged: bool = False  # folded into the base layers now (merged mode)
    pinned: bool = False  # an admin asked for it to be merged whenever the batch is its own


class AdapterInfo(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    version: int
    current_version: int
    created: int
    kind: Literal["adapter", "prompt"]
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = Field(default_factory=list)
    base_model: str | None = None
    files: list[FileInfo] = Field(default_factory=list)
    versions: list[VersionInfo]
    persona: dict[str, Any]
    resident: Residency


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]
    quarantined: dict[str, str] = Field(
        default_factory=dict, description="`name@version` -> why: stored versions that cannot "
        "be served (left out of `data`; DELETE the name or upload a new version)")


class Deleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool = True
    versions: list[int]


class PersonaInfo(BaseModel):
    id: str
    object: Literal["persona"] = "persona"
    version: int
    display_name: str
    description: str
    greeting: str
    tags: list[str]
    system_prompt: str
    example_messages: list[dict[str, str]]
    sampling: dict[str, float]
    post_history_instructions: str = ""
    adapter: str | None = None


class PersonaList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PersonaInfo]


class CardImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: dict[str, Any]
    name: str | None = Field(default=None, max_length=64)
    adapter: str | None = Field(default=None, max_length=64)
