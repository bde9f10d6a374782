"""`cameo upload`, `cameo rm` and `cameo import-card`: the admin commands (they send the admin key).

Contract: `add_commands` declares the three commands. A local problem found before anything is
sent (a folder without an adapter, a file that cannot be read, a persona name the server would
refuse) exits 2; what the server refuses exits 1 (`main` reports it). A card file, `.json` or
`.png`, is sent as it is: the server reads the card, and its 400 says what is wrong with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from clients.cli.output import bar, err
from clients.client import CameoClient


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    upload = commands.add_parser("upload", parents=[common], help="upload a PEFT adapter folder",
                                 description="Upload adapter_config.json, "
                                             "adapter_model.safetensors and (when present) "
                                             "persona.json from DIR.")
    upload.add_argument("directory", metavar="DIR")
    upload.add_argument("--name", help="persona name (default: the folder's name)")
    upload.add_argument("--replace", action="store_true", help="replace an adapter of this name")
    upload.add_argument("--force", action="store_true", help="skip the compatibility checks")
    upload.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    upload.set_defaults(run=cmd_upload)

    remove = commands.add_parser("rm", parents=[common], help="delete an adapter")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(run=cmd_rm)

    card = commands.add_parser("import-card", parents=[common],
                               help="import a SillyTavern character card (.json or .png)")
    card.add_argument("file", metavar="FILE")
    card.add_argument("--name", help="persona name (default: from the card)")
    card.add_argument("--adapter", help="attach the card to this existing adapter")
    card.add_argument("--replace", action="store_true",
                      help="publish a new version of an existing persona of this name")
    card.set_defaults(run=cmd_import_card)


def _progress(quiet: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """The upload's progress callback, and what to call when the upload ends: a redrawn bar on
    a terminal, a line per quarter when stderr is a file or pipe, nothing with --quiet."""
    started = time.monotonic()
    tty = sys.stderr.isatty()
    shown = {"percent": -1, "quarter": -1}

    def progress(sent: int, total: int) -> None:
        percent = int(100 * sent / total) if total else 100
        if quiet or percent == shown["percent"]:
            return
        shown["percent"] = percent
        if tty:
            bar(sent, total, started, sys.stderr)
        elif percent // 25 != shown["quarter"]:
            shown["quarter"] = percent // 25
            bar(sent, total, started, sys.stderr)
            sys.stderr.write("\n")

    def done() -> None:
        if tty and not quiet and shown["percent"] >= 0:
            sys.stderr.write("\n")

    return progress, done


def cmd_upload(client: CameoClient, args: argparse.Namespace) -> int:
    progress, done = _progress(args.quiet)
    try:
        adapter = client.upload(args.directory, args.name, replace=args.replace, force=args.force,
                                progress=progress)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        err(f"error: {exc}")
        return 2
    finally:
        done()
    details = [f"version {adapter.version}" if adapter.version else "",
               f"rank {adapter.rank}" if adapter.rank else ""]
    extra = ", ".join(d for d in details if d)
    print(f"uploaded {adapter.name}" + (f" ({extra})" if extra else ""))
    return 0


def cmd_rm(client: CameoClient, args: argparse.Namespace) -> int:
    result = client.delete(args.name)
    print(f"deleted {result.id}" if result.deleted else f"{result.id} was not deleted")
    return 0 if result.deleted else 1


def cmd_import_card(client: CameoClient, args: argparse.Namespace) -> int:
    try:
        persona = client.import_card(args.file, name=args.name, adapter=args.adapter,
                                     replace=args.replace)
    except (OSError, ValueError) as exc:
        err(f"error: {exc}")
        return 2
    where = f" on adapter {persona.adapter}" if persona.adapter else ""
    print(f"imported {persona.display_name} as '{persona.id}'{where}")
    return 0
