"""The engine seen from asyncio: `generate(request)` is an async iterator of `RequestOutput`s.

The worker thread calls each request's sink; the sink hands the output to the event loop with
`call_soon_threadsafe`, so the engine never blocks on a slow client. Leaving the iterator early
(client gone, task cancelled) aborts the request, which frees its batch row at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.engine.engine import Engine
from server.engine.types import GenerationRequest, RequestOutput


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def sink(output: RequestOutput) -> None:
            loop.call_soon_threadsafe(outputs.put_nowait, output)

        self.engine.submit(request, sink)
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                finished = output.finished
                yield output
        finally:
            if not finished:
                self.engine.abort(request.request_id)
