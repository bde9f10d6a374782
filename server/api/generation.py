"""The generation plumbing chat and text completions share: refusals, persona, admission, the
engine requests of a request's choices, and answering or streaming them.

Order of work, cheapest refusal first: rate limit and queue room (429) and the route's own body
checks (400) in `precheck`; the route resolves the persona (404) and builds its prompt (400);
`start` admits each engine request with its prompt's token count (429) before any reaches the
engine. A request with `n` choices (or several prompts) is that many engine requests, one batch
row each; `interleave` yields their outputs as `(choice index, output)` in arrival order. A
client that goes away, streaming or not, aborts every one of them, which frees their batch rows
at the next engine step. Every engine request carries a deadline (`CAMEO_REQUEST_TIMEOUT`).

It does not build response bodies: each route does, from the outputs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from server.api.admission import Ticket
from server.api.auth import caller_identity
from server.api.errors import APIError, error_body, quote, status_of
from server.api.metrics import RequestTimer
from server.api.schemas import ErrorResponse, Usage
from server.api.streams import Indexed, Stream, interleave, until_disconnect
from server.composition import Cameo
from server.engine.types import GenerationRequest, RequestOutput, SamplingParams
from server.lora.adapter import AdapterError
from server.registry.personas import Persona

T = TypeVar("T")
Job = tuple[Sequence[int], SamplingParams]  # prompt ids, sampling: one engine request


def documented(what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a generation route: `what` for 200 (JSON or SSE), errors."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 500, 503,
                                                        504)}
    responses[200] = {"description": what,
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    return responses


def precheck(http: Request, check: Callable[[], None]) -> None:
    """Rate limit, queue room, then the route's `check`; each refusal counted in metrics."""
    state = http.app.state
    try:
        state.admission.check_rate(caller_identity(http))
        state.admission.check_room()
        check()
    except APIError as exc:
        state.metrics.rejected.labels(exc.code or str(exc.status)).inc()
        raise


def resolve_model(cameo: Cameo, name: str) -> Persona | None:
    """The persona a `model` field names; None for the base model itself."""
    if name == cameo.base.model_id:
        return None
    persona = cameo.registry.get(name)
    if persona is None:
        raise APIError(404, f"the model {quote(name)} does not exist; GET /v1/models lists them",
                       param="model", code="model_not_found")
    return persona


def display_name(cameo: Cameo, name: str) -> str:
    """How another speaker in the history is introduced: its card's display name."""
    persona = cameo.registry.get(name) if name != cameo.base.model_id else None
    return persona.card.display_name if persona is not None else name


@dataclass
class _Account:
    """One engine request's admission ticket and metrics, settled exactly once."""

    ticket: Ticket
    timer: RequestTimer
    settled: bool = False

    def settle(self, status: str, prompt_tokens: int) -> None:
        if not self.settled:
            self.settled = True
            self.ticket.close()
            self.timer.finish(status, prompt_tokens)


@dataclass
class Launch:
    """A request's engine streams, not yet started, and `release`, which settles any whose
    stream never ran (a client gone before its task started) as cancelled."""

    streams: list[Stream]
    accounts: list[_Account] = field(default_factory=list)

    def release(self) -> None:
        for account in self.accounts:
            account.settle("cancelled", 0)


def start(http: Request, cameo: Cameo, persona: Persona | None, jobs: Sequence[Job],
          request_id: str) -> Launch:
    """Admit every job (all or none) and return their output streams, not yet started."""
    state = http.app.state
    tickets: list[Ticket] = []
    try:
        for prompt, _ in jobs:
            tickets.append(state.admission.admit(len(prompt)))
    except APIError as exc:
        for ticket in tickets:
            ticket.close()
        state.metrics.rejected.labels(exc.code or str(exc.status)).inc()
        raise
    deadline = time.monotonic() + cameo.settings.request_timeout
    label = persona.name if persona else "base"
    launch = Launch(streams=[])
    for index, ((prompt, sampling), ticket) in enumerate(zip(jobs, tickets, strict=True)):
        engine_id = request_id if len(jobs) == 1 else f"{request_id}-{index}"
        request = GenerationRequest(request_id=engine_id, prompt_ids=tuple(prompt),
                                    sampling=sampling, deadline=deadline,
                                    adapter=persona.adapter if persona else None)
        account = _Account(ticket, RequestTimer(state.metrics, label))
        launch.accounts.append(account)
        launch.streams.append(_tracked(_generate(cameo, request, persona), account))
    return launch


async def respond(http: Request, launch: Launch, stream: bool,
                  events: Callable[[AsyncIterator[Indexed]], AsyncIterator[str]],
                  complete: Callable[[AsyncIterator[Indexed]], Awaitable[T]]) -> T | Response:
    """Answer with `complete(outputs)`, or with `stream` an SSE response of `events(outputs)`
    once the first output is there (so that a failure before it is a plain HTTP error)."""
    outputs = interleave(launch.streams)
    if not stream:
        try:
            result = await until_disconnect(http, complete(outputs))
        finally:
            await outputs.aclose()  # after a failure: the other choices stop too
            launch.release()
        return result if result is not None else Response(status_code=499)
    try:
        head = await until_disconnect(http, _first(outputs))
    except BaseException:
        launch.release()
        raise
    if head is None:
        await outputs.aclose()
        launch.release()
        return Response(status_code=499)  # nobody is listening any more
    return EventSourceResponse(events(_chain(head, outputs, launch)), ping=15, sep="\n")


async def _tracked(outputs: AsyncIterator[RequestOutput], account: _Account) -> Stream:
    """Account one engine request in admission and metrics, however it ends."""
    status, prompt_tokens = "cancelled", 0
    try:
        async for output in outputs:
            account.ticket.started()
            prompt_tokens = output.prompt_tokens or prompt_tokens
            if output.token_ids:
                account.timer.token(output.queue_seconds, len(output.token_ids))
            if output.finished:
                status = _status(output)
            yield output
    except APIError:
        status = "error"
        raise
    finally:
        account.settle(status, prompt_tokens)


def _status(output: RequestOutput) -> str:
    if output.error_code == "timeout":
        return "timeout"
    if output.error is not None:
        return "error"
    return "cancelled" if output.finish_reason == "abort" else "ok"


async def _generate(cameo: Cameo, request: GenerationRequest,
                    persona: Persona | None) -> AsyncIterator[RequestOutput]:
    try:
        async for output in cameo.service.generate(request):
            yield output
    except AdapterError as exc:
        name = persona.name if persona else cameo.base.model_id
        if persona is not None and _deleted_since(cameo, persona):
            raise APIError(404, f"the model {name!r} was deleted while the request started",
                           param="model", code="model_not_found") from exc
        raise APIError(500, f"the adapter of {name!r} cannot be loaded: {exc.message}",
                       code="adapter_load_failed") from exc


def _deleted_since(cameo: Cameo, persona: Persona) -> bool:
    """The version was deleted after the request resolved it (its files went with it)."""
    current = cameo.registry.get(persona.name)
    return current is None or (current.version != persona.version
                               and not (persona.adapter and persona.adapter.path.exists()))


async def _first(outputs: AsyncIterator[Indexed]) -> Indexed | None:
    async for item in outputs:
        return item
    return None


async def _chain(head: Indexed, rest: AsyncGenerator[Indexed, None],
                 launch: Launch) -> AsyncIterator[Indexed]:
    """`head`, then `rest`; closing this closes `rest` (and so every engine request)."""
    try:
        async with contextlib.aclosing(rest) as tail:
            yield head
            async for item in tail:
                yield item
    finally:
        launch.release()


def raise_for(output: RequestOutput) -> None:
    """An engine failure as the HTTP error it means."""
    if output.error is not None:
        status = status_of(output.error_code)
        raise APIError(status, output.error, code=output.error_code,
                       type="timeout" if status == 504 else None)


def error_event(output: RequestOutput | APIError) -> str:
    """A failure after a stream started: one `data: {"error": ...}` event."""
    if isinstance(output, APIError):
        return json.dumps(output.body())
    return json.dumps(error_body(output.error or "error", "server_error", None,
                                 output.error_code))


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)
