"""Cameo's clients, which talk to a server over HTTP only (they never import `server`).

- `clients.client`: `CameoClient` (sync) and, re-exported, `AsyncCameoClient` (`async_client`),
  thin httpx transports over `clients.wire` (request bodies, streams, answers; no network I/O)
  and `clients.types` (the results and errors). The names are re-exported here too.
- `clients.cli`: the `cameo` command (a package: one module per command group; commands from
  other packages come in through the `cameo.commands` entry point group).
- `clients/web/`: the web chat, plain ES modules with no build step, which the server serves.
"""

from clients.client import *  # noqa: F403  (the public API, as listed in clients.client)
from clients.client import __all__ as __all__
