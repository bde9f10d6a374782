"""Bodies of the legacy text completions (`/v1/completions`) and of vLLM's `/tokenize` and
`/detokenize` (pydantic), and nothing else.

Text completions share every sampling field with chat (`SamplingFields`); `logprobs` here is
OpenAI's legacy integer (0..5) and `max_tokens` defaults to 16 as OpenAI's does. The response's
`finish_reason` is null only on stream chunks before a choice's last one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.api.schemas import SYSTEM_FINGERPRINT, ChatMessage, SamplingFields, Usage

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt = Field(description="A string, strings, token ids, or lists of token ids.")
    max_tokens: int | None = Field(default=16, ge=0, description="0 only with `echo`.")
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = False
    suffix: str | None = Field(default=None, description="Not supported.")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape; with `echo`, the first prompt token's entries are null."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str = SYSTEM_FINGERPRINT
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TokenizeRequest(BaseModel):
    """vLLM's: `prompt` (raw text) or `messages` (rendered as a chat request would be)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, description="A persona or the base (default).")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
