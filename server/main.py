"""`cameo-server`: parse settings (flags over environment over defaults) and run uvicorn.

Example: cameo-server --base-model embedded --quantization nf4 --port 8000
"""

from __future__ import annotations

import logging
import sys

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
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
