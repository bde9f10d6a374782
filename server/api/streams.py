"""Async plumbing of the generation routes: merging a request's engine streams, and awaiting
work only while the client is still there.

Contract: `interleave(streams)` yields `(stream index, output)` in arrival order; an exception
in one stream is raised to the reader, and closing the merged stream (or its failing) cancels
every stream still running, so their engine requests are aborted. `until_disconnect(http, work)`
returns `work`'s result, or cancels it and returns None once the client has gone.

It knows nothing of admission, metrics or response bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request

from server.engine.types import RequestOutput

T = TypeVar("T")
Indexed = tuple[int, RequestOutput]
Stream = AsyncGenerator[RequestOutput, None]


async def until_disconnect(http: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, unless the client disconnects first: then cancel it and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(http))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        watcher.cancel()


async def _disconnected(http: Request) -> None:
    while True:
        message = await http.receive()  # the body was read already: the next message is this
        if message["type"] == "http.disconnect":
            return


async def interleave(streams: list[Stream]
                     ) -> AsyncGenerator[Indexed, None]:
    """Every stream's outputs as (stream index, output), in arrival order. An exception in one
    stream is raised here; leaving early (or failing) cancels every stream still running."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for output in only:
                yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, outputs: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in outputs:
                queue.put_nowait((index, output))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
