"""`cameo-server`: parse settings (flags over environment over defaults) and run uvicorn.

Example: cameo-server --base-model embedded --quantization nf4 --port 8000

Start-up: if loading the model or the registry fails, the error is logged with its cause and the
process exits with code 1 within seconds, so that a supervisor restarts it and someone is told.

Shutdown: the first SIGTERM (or Ctrl-C) starts a drain: `/ready` turns 503, new requests get
503, requests in flight (streams, uploads) may finish for up to `CAMEO_DRAIN_TIMEOUT` seconds;
then uvicorn stops and the process exits with code 0. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from server.api.app import create_app
from server.logs import configure
from server.settings import Settings

log = logging.getLogger(__name__)


def parse_settings(argv: list[str]) -> Settings:
    return Settings(_cli_parse_args=argv)  # type: ignore[call-arg]


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    configure(settings.log_level, settings.json_logs)
    log.info("starting Cameo on http://%s:%d (base: %s, %s, registry: %s)", settings.host,
             settings.port, settings.base_model, settings.quantization, settings.registry_dir)
    if settings.admin_key is None:
        log.warning("CAMEO_ADMIN_KEY is not set: adapter management is accepted from loopback "
                    "clients only")
    if not settings.api_key_list:
        log.warning("CAMEO_API_KEYS is not set: the inference routes need no key")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False,
                            timeout_graceful_shutdown=int(settings.drain_timeout) + 5)
    server = GracefulServer(config, app.state, settings.drain_timeout)
    app.state.on_fatal = server.stop_now
    server.run()
    if app.state.fatal is not None:
        log.critical("exiting: start-up failed (%s)", type(app.state.fatal).__name__)
        sys.exit(1)


class GracefulServer(uvicorn.Server):
    """uvicorn with a drain before shutdown, exiting 0 on SIGTERM/SIGINT.

    Plain uvicorn stops accepting connections at once and re-raises the signal when done, so
    the process dies by it and orchestrators report a crash for an ordinary stop.
    """

    def __init__(self, config: uvicorn.Config, state: Any, drain_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self._draining = False

    def stop_now(self) -> None:
        """Stop without a drain (nothing can be in flight before the model has loaded)."""
        self._draining = True
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: stop now
            self.should_exit = True
            return
        self._draining = True
        self.state.draining = True
        log.info("signal %d: draining (%d request(s) in flight, at most %.0f s)", sig,
                 self.state.in_flight, self.drain_timeout)
        threading.Thread(target=self._drain, name="cameo-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.state.in_flight:
            log.warning("drain timeout: stopping with %d request(s) in flight",
                        self.state.in_flight)
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    main()
