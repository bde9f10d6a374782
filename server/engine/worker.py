"""The engine's thread: an inbox any thread may post to, a step loop, a heartbeat.

Contract: `EngineWorker` is the only caller of its `Engine`. Other threads `submit` requests
(with their adapter's host-memory weights), `abort` them, `retire` adapter versions, and `call`
a function on the worker between two steps (merging, scoring), which returns a Future. A step
that raises fails the rows it was running and the loop goes on; if the loop itself dies, every
request fails and `failure` says why. `stalled(timeout)` tells whether the loop has stopped
coming round (the /ready probe and Serve's health check read it).

It does not schedule or sample (the engine does) and knows nothing about asyncio (see
`server.engine.async_engine`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from server.engine.engine import Engine
from server.engine.output import Sink
from server.engine.types import GenerationRequest
from server.lora.adapter import AdapterWeights

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineWorker:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_heartbeat = time.monotonic()
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="cameo-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stalled(self, timeout: float) -> bool:
        """True when the worker has not come round its loop for `timeout` seconds."""
        return self.alive and time.monotonic() - self.last_heartbeat > timeout

    def submit(self, request: GenerationRequest, sink: Sink,
               weights: AdapterWeights | None = None) -> None:
        """Queue a request; its outputs go to `sink` (called on the worker thread)."""
        self._post(lambda: self.engine.add(request, sink, weights))

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step boundary and free its row."""
        self._post(lambda: self.engine.abort(request_id))

    def retire(self, key: str) -> None:
        """Free adapter `key`'s slot once no running row uses it (a replaced or deleted version)."""
        self._post(lambda: self.engine.retire(key))

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the worker thread between two steps."""
        future: Future[T] = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
        self._post(run)
        return future

    # ------------------------------------------------------------------ the worker thread

    def _post(self, job: Callable[[], None]) -> None:
        self._inbox.put(job)
        self._wake.set()

    def _loop(self) -> None:
        log.info("engine worker started")
        engine = self.engine
        try:
            while not self._stopping.is_set():
                self.last_heartbeat = time.monotonic()
                self._drain_inbox()
                self.last_heartbeat = time.monotonic()
                engine.publish_stats()
                if engine.idle:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    engine.step()
                except Exception as exc:  # a failed step fails its rows, not the server
                    log.exception("engine step failed")
                    engine.fail_running(f"engine step failed: {exc}")
        except BaseException as exc:  # the worker dying must not be silent
            self.failure = exc
            log.exception("engine worker died")
            engine.fail_all(f"engine failure: {exc}")
            raise
        finally:
            log.info("engine worker stopped")

    def _drain_inbox(self) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            job()


__all__ = ["EngineWorker"]
