"""Commands that other packages add to `cameo`, found through the `cameo.commands` entry points.

A distribution declares one in its metadata:

    [project.entry-points."cameo.commands"]
    train = "adapters.training.cli:register"

The entry point's name is the command; its object is called with no arguments and returns a
`Command`: a one-line `help` and `run(argv) -> int`, which receives every argument after the
command's name untouched (the command parses its own options) and needs no server connection.
Built-in commands win over a plugin of the same name. A plugin is imported only to list it in
`cameo --help` and to run it; one that fails to import is listed as unavailable and, when run,
exits 2 saying why. The CLI never imports a plugin's package by name.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Protocol

from clients.cli.output import err, exit_code

GROUP = "cameo.commands"


class Command(Protocol):
    @property
    def help(self) -> str: ...

    def run(self, argv: list[str]) -> int: ...


def discover(reserved: set[str]) -> dict[str, EntryPoint]:
    """The plugin commands by name, leaving out those that a built-in command has."""
    return {ep.name: ep for ep in entry_points(group=GROUP) if ep.name not in reserved}


def load(entry: EntryPoint) -> Command:
    """The entry point's command; any failure to import or build it is raised as ImportError."""
    try:
        command: Command = entry.load()()
    except Exception as exc:  # a broken plugin must not take the other commands down
        raise ImportError(f"{type(exc).__name__}: {exc}") from exc
    return command


def describe(entry: EntryPoint) -> str:
    """The one-line help of `cameo --help`."""
    try:
        return load(entry).help
    except ImportError as exc:
        return f"(unavailable: {entry.value} cannot be loaded: {exc})"


def run(name: str, entry: EntryPoint, argv: list[str]) -> int:
    try:
        command = load(entry)
    except ImportError as exc:
        err(f"error: the command '{name}' ({entry.value}) cannot be loaded: {exc}")
        return 2
    try:
        result = command.run(argv)
    except SystemExit as exc:  # argparse's --help and usage errors in the command's own parser
        return exit_code(exc, usage=1)
    return int(result) if isinstance(result, int) else 0
