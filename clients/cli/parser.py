"""The `cameo` argument parser: connection flags, the built-in commands, and the plugin split.

Contract: `build_parser()` gives the whole parser and the plugin commands it found. The
connection flags (`--url`, `--api-key`, `--admin-key`, `--timeout`) are accepted before or after
the command, and their defaults are resolved by `main` (flag, then environment, then default).
`split_plugin` finds a plugin command before argparse runs, so that the plugin's own options
never reach argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Sequence
from importlib.metadata import EntryPoint

from clients.cli import admin, chat, plugins
from clients.cli.output import PROG
from clients.wire import DEFAULT_URL

_VALUE_FLAGS = ("--url", "--api-key", "--admin-key", "--timeout")


def _common() -> argparse.ArgumentParser:
    """Connection flags that may come after the command too (defaults stay on the top parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"server URL (env CAMEO_URL, default {DEFAULT_URL})")
    common.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="API key sent as a Bearer token (env CAMEO_API_KEY)")
    common.add_argument("--admin-key", default=argparse.SUPPRESS,
                        help="admin key for upload/rm/import-card (env CAMEO_ADMIN_KEY; "
                             "default: the API key)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for the server (default 300)")
    return common


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, EntryPoint]]:
    """The parser, plugin commands listed in its help, and those plugins by name."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Chat with the personas of a Cameo server and manage them.",
        epilog="Run 'cameo COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    chat.add_commands(commands, common)
    admin.add_commands(commands, common)
    found = plugins.discover(reserved=set(commands.choices or ()))
    for name, entry in found.items():
        commands.add_parser(name, help=plugins.describe(entry), add_help=False)
    return parser, found


def split_plugin(argv: Sequence[str],
                 names: Collection[str]) -> tuple[list[str], str, list[str]] | None:
    """(leading flags, command, its arguments) when the command is a plugin's, else None."""
    index = 0
    while index < len(argv):
        item = argv[index]
        if item in names:
            return list(argv[:index]), item, list(argv[index + 1:])
        if item.split("=", 1)[0] in _VALUE_FLAGS:
            index += 1 if "=" in item else 2
            continue
        if item.startswith("-"):
            index += 1
            continue
        return None
    return None
