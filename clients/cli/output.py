"""What every `cameo` command prints the same way: errors, the upload bar, the persona list.

Contract: errors go to stderr as `cameo: error: ...`; results go to the stream a command is
given (stdout unless told). Nothing here talks to a server or reads arguments.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from clients.types import CameoError, Persona

PROG = "cameo"


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def fail(exc: CameoError) -> int:
    """Report an error the server answered (or a server that cannot be reached): exit 1."""
    err(f"error: {exc}")
    return 1


def exit_code(exc: SystemExit, usage: int = 2) -> int:
    """The exit status of a SystemExit (argparse's --help is 0, its usage errors `usage`)."""
    code = exc.code
    return code if isinstance(code, int) else (0 if code is None else usage)


def bar(sent: int, total: int, started: float, stream: TextIO) -> None:
    width = 30
    fraction = sent / total if total else 1.0
    filled = int(width * fraction)
    rate = sent / max(time.monotonic() - started, 1e-6)
    line = (f"\ruploading [{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%} "
            f"{size(sent)}/{size(total)} {size(int(rate))}/s")
    stream.write(line)
    stream.flush()


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def print_personas(personas: list[Persona], out: TextIO) -> None:
    if not personas:
        print("no personas: upload one with 'cameo upload DIR --name NAME'", file=out)
        return
    width = max(len(p.id) for p in personas)
    for persona in personas:
        title = "(base model)" if persona.is_base else persona.display_name
        line = f"{persona.id:<{width}}  {title}"
        if persona.description:
            line += f" - {persona.description}"
        print(line, file=out)
        if persona.greeting:
            print(f"{'':<{width}}  \u201c{persona.greeting}\u201d", file=out)
