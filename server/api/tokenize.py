"""`POST /tokenize` and `POST /detokenize`, in vLLM's shapes, behind the inference keys.

- `/tokenize` with `{"model", "prompt"}`: the prompt's token ids as a text completion would
  use them (the tokenizer's special tokens added unless `add_special_tokens: false`).
  With `{"model", "messages"}`: the ids of the prompt a chat request with those messages would
  run, the persona's system prompt and card included (`add_generation_prompt`, default true).
  Answer: `{"count", "max_model_len", "tokens"}` (and `token_strs` with `return_token_strs`).
- `/detokenize` with `{"model", "tokens"}`: `{"prompt": text}`; ids outside the vocabulary are
  a 400 naming `tokens`.

`model` (a persona or the base; default the base) must exist (404). Neither route reaches the
engine, nor counts against admission.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from server.api.auth import require_user
from server.api.checks import check_messages
from server.api.completion_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.api.deps import get_cameo
from server.api.errors import APIError
from server.api.generation import display_name, resolve_model
from server.api.prompt import build_messages, encode_prompt
from server.api.sampling import vocab_size
from server.api.schemas import ErrorResponse
from server.composition import Cameo

router = APIRouter(dependencies=[Depends(require_user)])
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 503)}


@router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
async def tokenize(body: TokenizeRequest,
                   cameo: Cameo = Depends(get_cameo)) -> TokenizeResponse:
    persona = resolve_model(cameo, body.model or cameo.base.model_id)
    tokenizer = cameo.base.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt",
                       code="invalid_value")
    if body.messages is not None:
        check_messages(body.messages, cameo.settings)
        model = body.model or cameo.base.model_id
        messages = build_messages(body.messages, persona, speaker=model,
                                  display=lambda name: display_name(cameo, name))
        ids = encode_prompt(tokenizer, messages,
                            add_generation_prompt=body.add_generation_prompt,
                            add_special_tokens=bool(body.add_special_tokens))
    else:
        assert body.prompt is not None
        if len(body.prompt) > cameo.settings.max_message_chars:
            raise APIError(400, f"prompt: over {cameo.settings.max_message_chars} characters",
                           param="prompt", code="message_too_long")
        special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = list(tokenizer(body.prompt, add_special_tokens=special)["input_ids"])
    strs = list(tokenizer.convert_ids_to_tokens(ids)) if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=cameo.max_context, tokens=ids,
                            token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
async def detokenize(body: DetokenizeRequest,
                     cameo: Cameo = Depends(get_cameo)) -> DetokenizeResponse:
    resolve_model(cameo, body.model or cameo.base.model_id)
    tokenizer = cameo.base.tokenizer
    vocab = vocab_size(cameo)
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"tokens: {bad} is outside the vocabulary (0..{vocab - 1})",
                       param="tokens", code="invalid_value")
    return DetokenizeResponse(prompt=str(tokenizer.decode(body.tokens)))
