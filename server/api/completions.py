"""`POST /v1/completions`: OpenAI's legacy text completions, on raw text.

Contract: `prompt` is a string, a list of strings, a list of token ids or a list of such lists;
each prompt is used as it is (a string tokenized with the tokenizer's own special tokens, as
vLLM does): no chat template, no system prompt; a persona in `model` applies its adapter and
its card's sampling defaults. Every prompt gets `n` choices, each its own engine request;
choice `p * n + j` is prompt p's choice j (with a `seed`, choice j uses `seed + j`).
`max_tokens` defaults to 16, capped by the room the prompt leaves; `0` is allowed with `echo`
(scoring a prompt, as lm-eval's loglikelihood does): the prompt runs one engine step and no
generated token is reported. `echo` puts the prompt's text before each choice's text, and with
`logprobs` its tokens' logprobs before the generated ones' (the first one null: nothing
predicts it). `logprobs` N (0..5) is the legacy shape (`server.api.logprobs`). `stream` sends
`text_completion` chunks, each choice's `finish_reason` null until its last chunk, a usage
chunk with `stream_options.include_usage` (and `usage: null` on the others), then
`data: [DONE]`. Usage counts each prompt once and every choice's generated tokens.

Refused with a 400 naming the parameter: `suffix`, `best_of` > 1, `n` above `CAMEO_MAX_N`,
`max_tokens: 0` without `echo`, more prompts x `n` than `CAMEO_MAX_WAITING_REQUESTS`, token
ids outside the vocabulary, an empty prompt, a prompt over `CAMEO_MAX_MESSAGE_CHARS`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.api.auth import require_user
from server.api.checks import check_completion
from server.api.completion_schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from server.api.deps import get_cameo
from server.api.errors import APIError
from server.api.generation import (
    Job,
    documented,
    error_event,
    precheck,
    raise_for,
    resolve_model,
    respond,
    start,
    usage,
)
from server.api.logprobs import TokenTexts, legacy, merge_legacy, token_texts
from server.api.sampling import check_room, per_choice, sampling_params, vocab_size
from server.api.schemas import Usage
from server.api.streams import Indexed
from server.composition import Cameo
from server.engine.types import RequestOutput, TokenLogprob
from server.registry.personas import Persona
from server.settings import Settings

router = APIRouter()
_RESPONSES = documented("A text completion, or with `stream: true` a server-sent event stream "
                        "of text_completion objects ending with `data: [DONE]`")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # what `echo` puts first


@dataclass
class ChoiceState:
    """One choice as its outputs arrive: the text and logprobs each output adds."""

    prompt: Prompt
    echo: bool
    scored_only: bool  # max_tokens 0: the one engine token is not reported
    texts: TokenTexts | None  # set when logprobs were asked for
    offset: int = 0  # characters of this choice's text so far, for `text_offset`
    started: bool = False
    last: RequestOutput | None = None
    pieces: list[tuple[str, CompletionLogprobs | None]] = field(default_factory=list)

    def add(self, output: RequestOutput) -> tuple[str, CompletionLogprobs | None]:
        self.last = output
        text, parts = "", []
        if not self.started:
            self.started = True
            if self.echo:
                text = self.prompt.text
                if self.texts is not None:
                    parts.append(self._prompt_logprobs(output.prompt_logprobs))
        if not self.scored_only:
            if self.texts is not None:
                parts.append(self._logprobs(output.token_ids, output.logprobs, len(text)))
            text += output.text
        self.offset += len(text)
        piece = (text, merge_legacy(parts) if self.texts is not None else None)
        self.pieces.append(piece)
        return piece

    def _prompt_logprobs(self, entries: Sequence[TokenLogprob | None] | None
                         ) -> CompletionLogprobs:
        assert self.texts is not None
        padded = list(entries or ())[:len(self.prompt.ids)]
        padded += [None] * (len(self.prompt.ids) - len(padded))
        return legacy(self.texts, self.prompt.ids, padded, 0, generated=False)

    def _logprobs(self, token_ids: Sequence[int], entries: Sequence[TokenLogprob],
                  echoed: int) -> CompletionLogprobs:
        assert self.texts is not None
        padded: list[TokenLogprob | None] = [*entries[:len(token_ids)]]
        padded += [None] * (len(token_ids) - len(padded))
        return legacy(self.texts, token_ids, padded, self.offset + echoed, generated=True)

    @property
    def completion_tokens(self) -> int:
        return 0 if self.scored_only or self.last is None else self.last.completion_tokens

    @property
    def finish(self) -> Literal["stop", "length"]:
        if self.scored_only or self.last is None or self.last.finish_reason == "length":
            return "length"
        return "stop"


@router.post("/v1/completions", response_model=Completion, responses=_RESPONSES,
             dependencies=[Depends(require_user)])
async def completions(
    body: CompletionRequest, http: Request, cameo: Cameo = Depends(get_cameo)
) -> Completion | Response:
    precheck(http, lambda: check_completion(body, cameo.settings))
    persona = resolve_model(cameo, body.model)
    prompts = read_prompts(body, cameo)
    texts = token_texts(cameo.base.tokenizer) if body.logprobs is not None else None
    scored_only = body.max_tokens == 0
    states = [ChoiceState(prompt, bool(body.echo), scored_only, texts)
              for prompt in prompts for _ in range(body.choices)]
    reply_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    jobs = [job for prompt in prompts for job in _jobs(body, persona, prompt, cameo)]
    launch = start(http, cameo, persona, jobs, reply_id)
    prompt_tokens = sum(len(p.ids) for p in prompts)

    def reply(choices: list[CompletionChoice], used: Usage | None) -> Completion:
        return Completion(id=reply_id, created=created, model=body.model, choices=choices,
                          usage=used)

    async def complete(outputs: AsyncIterator[Indexed]) -> Completion:
        async for index, output in outputs:
            raise_for(output)
            states[index].add(output)
        return reply([_whole(i, s) for i, s in enumerate(states)], _usage(prompt_tokens, states))

    async def events(outputs: AsyncIterator[Indexed]) -> AsyncIterator[str]:
        exclude = None if body.include_usage else {"usage"}
        try:
            async for index, output in outputs:
                if output.error is not None:
                    yield error_event(output)
                    break
                text, logprobs = states[index].add(output)
                finish = states[index].finish if output.finished else None
                if text or logprobs is not None or finish:
                    choice = CompletionChoice(text=text, index=index, logprobs=logprobs,
                                              finish_reason=finish)
                    yield reply([choice], None).model_dump_json(exclude=exclude)
        except APIError as exc:
            yield error_event(exc)
        if body.include_usage:
            yield reply([], _usage(prompt_tokens, states)).model_dump_json()
        yield "[DONE]"

    return await respond(http, launch, bool(body.stream), events, complete)


def read_prompts(body: CompletionRequest, cameo: Cameo) -> list[Prompt]:
    """Every prompt as token ids and the text `echo` repeats; 400 naming `prompt`."""
    raw = body.prompt
    single = isinstance(raw, str) or all(isinstance(item, int) for item in raw)
    items = cast(list[str | list[int]], [raw] if single else raw)
    _check_count(len(items) * body.choices, cameo.settings)
    return [_prompt(item, cameo) for item in items]


def _check_count(count: int, settings: Settings) -> None:
    if count > settings.max_waiting_requests:
        raise APIError(400, f"prompt: at most {settings.max_waiting_requests} completions per "
                       "request (prompts x n)", param="prompt", code="too_many_prompts")


def _prompt(item: str | list[int], cameo: Cameo) -> Prompt:
    tokenizer = cameo.base.tokenizer
    if isinstance(item, str):
        if len(item) > cameo.settings.max_message_chars:
            raise APIError(400, f"prompt: over {cameo.settings.max_message_chars} characters",
                           param="prompt", code="message_too_long")
        ids = list(tokenizer(item, add_special_tokens=True)["input_ids"])
        prompt = Prompt(ids, item)
    else:
        vocab = vocab_size(cameo)
        bad = next((t for t in item if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary "
                           f"(0..{vocab - 1})", param="prompt", code="invalid_value")
        prompt = Prompt(list(item), str(tokenizer.decode(item)))
    if not prompt.ids:
        raise APIError(400, "prompt: an empty prompt", param="prompt", code="invalid_value")
    return prompt


def _jobs(body: CompletionRequest, persona: Persona | None, prompt: Prompt,
          cameo: Cameo) -> list[Job]:
    explicit = "max_tokens" in body.model_fields_set and body.max_tokens is not None
    wanted = body.max_tokens if body.max_tokens is not None else 16
    room = check_room(cameo, len(prompt.ids), max(wanted, 1) if explicit else None, "prompt")
    echo_logprobs = body.logprobs if body.echo else None
    # max_tokens 0 with prompt logprobs: the engine scores the prompt and stops there; without
    # them it generates one token, which the answer leaves out (`ChoiceState.scored_only`).
    limit = 0 if wanted == 0 and echo_logprobs is not None else max(min(wanted, room), 1)
    params = sampling_params(body, persona, cameo, max_tokens=limit, logprobs=body.logprobs,
                             prompt_logprobs=echo_logprobs)
    return [(prompt.ids, p) for p in per_choice(params, body.choices)]


def _whole(index: int, state: ChoiceState) -> CompletionChoice:
    logprobs = None
    if state.texts is not None:
        logprobs = merge_legacy([lp for _, lp in state.pieces if lp is not None])
    return CompletionChoice(text="".join(text for text, _ in state.pieces), index=index,
                            logprobs=logprobs, finish_reason=state.finish)


def _usage(prompt_tokens: int, states: Sequence[ChoiceState]) -> Usage:
    return usage(prompt_tokens, sum(s.completion_tokens for s in states))
