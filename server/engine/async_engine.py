"""The engine seen from asyncio: `generate(request, weights)` is an async iterator of outputs.

The worker thread calls each request's sink; the sink hands the output to the event loop with
`call_soon_threadsafe`, so the engine never blocks on a slow client. Leaving the iterator early
(client gone, task cancelled) aborts the request, which frees its batch row at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.engine.types import GenerationRequest, RequestOutput
from server.engine.worker import EngineWorker
from server.lora.adapter import AdapterWeights


async def generate(worker: EngineWorker, request: GenerationRequest,
                   weights: AdapterWeights | None) -> AsyncIterator[RequestOutput]:
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()

    def sink(output: RequestOutput) -> None:
        loop.call_soon_threadsafe(outputs.put_nowait, output)

    worker.submit(request, sink, weights)
    finished = False
    try:
        while not finished:
            output = await outputs.get()
            finished = output.finished
            yield output
    finally:
        if not finished:
            worker.abort(request.request_id)
