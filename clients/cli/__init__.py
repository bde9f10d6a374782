"""`cameo`: talk to a Cameo server from a terminal, and manage its personas.

    cameo personas                                  list the personas (GET /v1/models)
    cameo chat --persona alpha                      interactive chat, streamed
    cameo chat --persona alpha -m "Hello"           one message, reply on stdout
    cameo upload ./my-adapter --name pirate         upload a PEFT adapter folder (progress bar)
    cameo rm pirate                                 delete an adapter
    cameo import-card card.png [--name N] [--replace]   import a SillyTavern character card
    cameo train ...                                 train an adapter (a plugin: see below)

`--url` (env CAMEO_URL, default http://127.0.0.1:8000), `--api-key` (env CAMEO_API_KEY) and
`--admin-key` (env CAMEO_ADMIN_KEY; the API key when unset) go before or after the command.
Exit status: 0 done, 1 the server refused or could not be reached, 2 bad usage.

Modules: `parser` (flags and commands), `chat` (chat, personas), `admin` (upload, rm,
import-card), `output` (what they print), `plugins` (commands other packages declare in the
`cameo.commands` entry point group; `adapters` declares `train`). The CLI talks to the server
through `clients.client` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from clients.cli import plugins
from clients.cli.output import exit_code, fail
from clients.cli.parser import build_parser, split_plugin
from clients.client import CameoClient
from clients.types import CameoError
from clients.wire import DEFAULT_URL

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, found = build_parser()
    split = split_plugin(argv, found)
    if split is not None:
        leading, name, rest = split
        try:  # the leading connection flags are checked, then ignored: plugins run locally
            parser.parse_args([*leading, "personas"])
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
        return plugins.run(name, found[name], rest)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exit_code(exc, usage=2)
    url = getattr(args, "url", None) or os.environ.get("CAMEO_URL") or DEFAULT_URL
    api_key = getattr(args, "api_key", None) or os.environ.get("CAMEO_API_KEY") or None
    admin_key = getattr(args, "admin_key", None) or os.environ.get("CAMEO_ADMIN_KEY") or None
    timeout = getattr(args, "timeout", None) or 300.0
    try:
        with CameoClient(url, api_key, admin_key=admin_key, timeout=timeout) as client:
            code: int = args.run(client, args)
            return code
    except CameoError as exc:
        return fail(exc)
    except KeyboardInterrupt:
        return 130
