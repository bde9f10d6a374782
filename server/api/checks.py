"""Refusals before any work: sizes a client controls, and what Cameo cannot honour.

Contract: every check raises a 400 `APIError` naming the parameter (`param`, in the dotted form
OpenAI uses, e.g. `messages.0.content.1`), never a silent 200 that ignores what the client
asked for. Refused: `n` above `CAMEO_MAX_N`, `best_of` above 1, `stream_options` without
`stream: true`, `top_logprobs` without `logprobs: true`, audio output (`modalities`, `audio`),
`prediction`, and content parts other than text (images, audio, files); on text completions,
`suffix` and `max_tokens: 0` without `echo`.

It does not check sampling ranges (the schemas do) nor the context length (`server.api.sampling`).
"""

from __future__ import annotations

from server.api.completion_schemas import CompletionRequest
from server.api.errors import APIError, clip
from server.api.schemas import ChatCompletionRequest, ChatMessage, SamplingFields
from server.settings import Settings

_TEXT_PARTS = {"text"}
_ASSISTANT_PARTS = {"text", "refusal"}


def _refuse(param: str, message: str, code: str = "unsupported_parameter") -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code=code)


def check_common(body: SamplingFields, settings: Settings) -> None:
    if body.choices > settings.max_n:
        raise _refuse("n", f"at most {settings.max_n} choices per request (CAMEO_MAX_N)",
                      "invalid_value")
    if body.best_of is not None and body.best_of > 1:
        raise _refuse("best_of", "only 1 is supported; ask for n choices instead")
    if body.stream_options is not None and not body.stream:
        raise _refuse("stream_options", "only allowed with stream: true",
                      "invalid_value")


def check_chat(body: ChatCompletionRequest, settings: Settings) -> None:
    check_common(body, settings)
    if body.top_logprobs is not None and not body.logprobs:
        raise _refuse("top_logprobs", "needs logprobs: true", "invalid_value")
    if body.modalities and any(m != "text" for m in body.modalities):
        raise _refuse("modalities", "only the text modality is supported: Cameo's models do "
                      "not produce audio")
    if body.audio is not None:
        raise _refuse("audio", "audio output is not supported")
    if body.prediction is not None:
        raise _refuse("prediction", "predicted outputs are not supported")
    check_messages(body.messages, settings)


def check_messages(messages: list[ChatMessage], settings: Settings) -> None:
    """Sizes a client controls, each refused with the parameter named, and the content parts."""
    if len(messages) > settings.max_messages:
        raise APIError(400, f"at most {settings.max_messages} messages per request",
                       param="messages", code="too_many_messages")
    for index, message in enumerate(messages):
        _check_parts(index, message)
        if len(message.text()) > settings.max_message_chars:
            raise APIError(400, f"messages[{index}] is over {settings.max_message_chars} "
                           "characters", param=f"messages.{index}.content",
                           code="message_too_long")
        if message.role in ("user", "system", "developer") and message.content is None:
            raise APIError(400, f"messages[{index}] ({message.role}) needs content",
                           param=f"messages.{index}.content", code="invalid_value")


def _check_parts(index: int, message: ChatMessage) -> None:
    if not isinstance(message.content, list):
        return
    allowed = _ASSISTANT_PARTS if message.role == "assistant" else _TEXT_PARTS
    for number, part in enumerate(message.content):
        param = f"messages.{index}.content.{number}"
        if part.type not in allowed:
            raise _refuse(param, f"content parts of type {clip(part.type)!r} are not "
                          "supported; Cameo's models read text only", "unsupported_content")
        field = "text" if part.type == "text" else "refusal"
        if not isinstance(getattr(part, field), str):
            raise APIError(400, f"{param}.{field}: a {part.type} part needs a string {field}",
                           param=f"{param}.{field}", code="invalid_value")


def check_completion(body: CompletionRequest, settings: Settings) -> None:
    check_common(body, settings)
    if body.suffix is not None:
        raise _refuse("suffix", "insertion is not supported: Cameo's models only "
                      "continue a prompt")
    if body.max_tokens == 0 and not body.echo:
        raise _refuse("max_tokens", "0 needs echo: true (scoring the prompt)",
                      "invalid_value")
    if isinstance(body.prompt, list) and not body.prompt:
        raise _refuse("prompt", "an empty list", "invalid_value")
