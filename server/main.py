"""`cameo-server`: parse settings (flags over environment over defaults) and run uvicorn.

Example: cameo-server --base-model embedded --quantization nf4 --port 8000
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

import uvicorn

from server.api.app import create_app
from server.settings import Settings


def parse_settings(argv: list[str]) -> Settings:
    return Settings(_cli_parse_args=argv)  # type: ignore[call-arg]


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info(
        "starting Cameo on http://%s:%d (base: %s, %s, registry: %s)", settings.host,
        settings.port, settings.base_model, settings.quantization, settings.registry_dir)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=settings.log_level, timeout_graceful_shutdown=30)
    GracefulServer(config).run()


class GracefulServer(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT end the process with code 0 after a clean shutdown.

    Plain uvicorn re-raises the caught signal once it has shut down, so the process dies by
    that signal; orchestrators then report a crash for what was an ordinary stop.
    """

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
