"""`cameo`: talk to a Cameo server from a terminal, and manage its personas.

    cameo personas                                  list the personas (GET /v1/models)
    cameo chat --persona alpha                      interactive chat, streamed
    cameo chat --persona alpha -m "Hello"           one message, reply on stdout
    cameo upload ./my-adapter --name pirate         upload a PEFT adapter folder (progress bar)
    cameo rm pirate                                 delete an adapter
    cameo import-card card.json [--name N] [--replace]   import a SillyTavern Character Card V2
    cameo train ...                                 train an adapter (adapters.training.train)

`--url` (env CAMEO_URL, default http://127.0.0.1:8000), `--api-key` (env CAMEO_API_KEY) and
`--admin-key` (env CAMEO_ADMIN_KEY; the API key when unset) go before or after the command.
Exit status: 0 done, 1 the server refused or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from clients.client import DEFAULT_URL, CameoClient, CameoError, Persona

PROG = "cameo"
CHAT_HELP = """commands:
  /persona NAME   talk to another persona (the conversation goes on)
  /personas       list the personas
  /reset          start the conversation again
  /help           this help
  /quit           leave (also Ctrl-D); Ctrl-C stops a reply that is streaming"""


# ----------------------------------------------------------------------------------------------
# Argument parsing


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


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Chat with the personas of a Cameo server and manage them.",
        epilog="Run 'cameo COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    chat = commands.add_parser("chat", parents=[common], help="chat with a persona",
                               description="Chat with a persona: interactive, or one message "
                                           "with -m.", epilog=CHAT_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.add_argument("--persona", "-p", required=True, help="persona name (from 'cameo personas')")
    chat.add_argument("-m", "--message", help="send this one message, print the reply and exit "
                                              "('-' reads it from stdin)")
    chat.add_argument("--system", help="an extra system message (after the persona's own)")
    chat.add_argument("--max-tokens", type=int, help="reply length limit in tokens")
    chat.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    chat.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    chat.add_argument("--seed", type=int, help="sampling seed")
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole reply")

    personas = commands.add_parser("personas", parents=[common], help="list the personas")
    personas.add_argument("--json", action="store_true", help="print the raw JSON entries")
    personas.add_argument("--all", action="store_true", help="include the base model")

    upload = commands.add_parser("upload", parents=[common], help="upload a PEFT adapter folder",
                                 description="Upload adapter_config.json, "
                                             "adapter_model.safetensors and (when present) "
                                             "persona.json from DIR.")
    upload.add_argument("directory", metavar="DIR")
    upload.add_argument("--name", help="persona name (default: the folder's name)")
    upload.add_argument("--replace", action="store_true", help="replace an adapter of this name")
    upload.add_argument("--force", action="store_true", help="skip the compatibility checks")
    upload.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    remove = commands.add_parser("rm", parents=[common], help="delete an adapter")
    remove.add_argument("name", metavar="NAME")

    card = commands.add_parser("import-card", parents=[common],
                               help="import a SillyTavern Character Card V2 (.json or .png)")
    card.add_argument("file", metavar="FILE")
    card.add_argument("--name", help="persona name (default: from the card)")
    card.add_argument("--adapter", help="attach the card to this existing adapter")
    card.add_argument("--replace", action="store_true",
                      help="publish a new version of an existing persona of this name")

    commands.add_parser("train", help="train a LoRA adapter (all arguments go to the trainer)",
                        add_help=False)
    return parser


def _option_value(argv: Sequence[str], index: int) -> int:
    """How many items the connection flag at argv[index] takes (1 with '=', else 2)."""
    return 1 if "=" in argv[index] else 2


_VALUE_FLAGS = ("--url", "--api-key", "--admin-key", "--timeout")


def _split_train(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(leading flags, trainer args) when the command is `train`, so that argparse never sees
    the trainer's own options."""
    index = 0
    while index < len(argv):
        item = argv[index]
        if item == "train":
            return list(argv[:index]), list(argv[index + 1:])
        if item.split("=", 1)[0] in _VALUE_FLAGS:
            index += _option_value(argv, index)
            continue
        if item.startswith("-"):
            index += 1
            continue
        return None
    return None


# ----------------------------------------------------------------------------------------------
# Output helpers


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _fail(exc: CameoError) -> int:
    _err(f"error: {exc}")
    return 1


def _bar(sent: int, total: int, started: float, stream: TextIO) -> None:
    width = 30
    fraction = sent / total if total else 1.0
    filled = int(width * fraction)
    rate = sent / max(time.monotonic() - started, 1e-6)
    line = (f"\ruploading [{'#' * filled}{'-' * (width - filled)}] {fraction:4.0%} "
            f"{_size(sent)}/{_size(total)} {_size(int(rate))}/s")
    stream.write(line)
    stream.flush()


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _print_personas(personas: list[Persona], out: TextIO) -> None:
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


# ----------------------------------------------------------------------------------------------
# Commands


def cmd_personas(client: CameoClient, args: argparse.Namespace) -> int:
    personas = client.personas(include_base=args.all)
    if args.json:
        print(json.dumps([dict(p.raw) for p in personas], indent=2))
    else:
        _print_personas(personas, sys.stdout)
    return 0


def cmd_upload(client: CameoClient, args: argparse.Namespace) -> int:
    started = time.monotonic()
    tty = sys.stderr.isatty()
    shown = {"percent": -1, "quarter": -1}

    def progress(sent: int, total: int) -> None:
        """A redrawn bar on a terminal; a line per quarter when stderr is a file or pipe."""
        if args.quiet:
            return
        percent = int(100 * sent / total) if total else 100
        if percent == shown["percent"]:
            return
        shown["percent"] = percent
        if tty:
            _bar(sent, total, started, sys.stderr)
        elif percent // 25 != shown["quarter"]:
            shown["quarter"] = percent // 25
            _bar(sent, total, started, sys.stderr)
            sys.stderr.write("\n")

    try:
        adapter = client.upload(args.directory, args.name, replace=args.replace, force=args.force,
                                progress=progress)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        _err(f"error: {exc}")
        return 2
    finally:
        if tty and not args.quiet and shown["percent"] >= 0:
            sys.stderr.write("\n")
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
        _err(f"error: {exc}")
        return 2
    where = f" on adapter {persona.adapter}" if persona.adapter else ""
    print(f"imported {persona.display_name} as '{persona.id}'{where}")
    return 0


TRAINER = "adapters.training.train"


def _import_trainer() -> Any:
    """The trainer module, imported lazily (it pulls in training-only packages). An editable
    install may not put the checkout's root on sys.path: then the checkout beside `clients/`
    is tried."""
    try:
        return importlib.import_module(TRAINER)
    except ImportError as first:
        root = Path(__file__).resolve().parents[1]
        if first.name not in ("adapters", "adapters.training", TRAINER) or \
                not (root / "adapters" / "training" / "train.py").is_file() or \
                str(root) in sys.path:
            raise
        sys.path.insert(0, str(root))
        return importlib.import_module(TRAINER)


def cmd_train(argv: list[str]) -> int:
    try:
        train_main = _import_trainer().main
    except (ImportError, AttributeError) as exc:
        _err("error: 'cameo train' needs the trainer (adapters/training/train.py from a Cameo "
             f"checkout, installed with its training extras): {exc}")
        return 2
    try:
        result = train_main(argv)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return int(result) if isinstance(result, int) else 0


class ChatSession:
    """The interactive loop of `cameo chat`: a conversation that can change persona."""

    def __init__(self, client: CameoClient, persona: Persona, personas: list[Persona],
                 args: argparse.Namespace, out: TextIO) -> None:
        self.client = client
        self.persona = persona
        self.personas = personas
        self.args = args
        self.out = out
        self.history: list[dict[str, str]] = []
        self.reset(announce=False)

    def params(self) -> dict[str, Any]:
        return {"system": self.args.system, "max_tokens": self.args.max_tokens,
                "temperature": self.args.temperature, "top_p": self.args.top_p,
                "seed": self.args.seed}

    def write(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def reset(self, announce: bool = True) -> None:
        self.history = []
        if announce:
            self.write("(conversation cleared)")
        if self.persona.greeting:
            self.history.append({"role": "assistant", "content": self.persona.greeting})
            self.write(f"{self.persona.display_name}: {self.persona.greeting}")

    def find(self, name: str) -> Persona | None:
        for persona in self.personas:
            if persona.id == name:
                return persona
        try:  # a persona uploaded since the session started
            self.personas = self.client.personas(include_base=True)
        except CameoError:
            return None
        return next((p for p in self.personas if p.id == name), None)

    def command(self, line: str) -> bool:
        """Run a /command; False when the session should end."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.write(CHAT_HELP)
        elif name == "/reset":
            self.reset()
        elif name == "/personas":
            try:
                self.personas = self.client.personas(include_base=True)
            except CameoError as exc:
                self.write(f"error: {exc}")
            else:
                _print_personas(self.personas, self.out)
        elif name == "/persona":
            if not rest:
                self.write(f"talking to {self.persona.id}; /persona NAME switches")
                return True
            found = self.find(rest)
            if found is None:
                known = ", ".join(p.id for p in self.personas if not p.is_base)
                self.write(f"unknown persona '{rest}'; known: {known}")
            else:
                self.persona = found
                self.write(f"(now talking to {found.display_name})")
                if not any(m["role"] == "user" for m in self.history):
                    self.reset(announce=False)
        else:
            self.write(f"unknown command {name}; /help lists them")
        return True

    def reply(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self.out.write(f"{self.persona.display_name}: ")
        self.out.flush()
        parts: list[str] = []
        try:
            if self.args.no_stream:
                parts.append(self.client.chat(self.persona.id, self.history,
                                              **self.params()).text)
                self.out.write(parts[-1])
            else:
                stream = self.client.stream_text(self.persona.id, self.history,
                                                 **self.params())
                try:
                    for delta in stream:
                        parts.append(delta)
                        self.out.write(delta)
                        self.out.flush()
                finally:
                    stream.close()  # closes the connection: the server stops generating
        except KeyboardInterrupt:
            self.write(" [stopped]")
        except CameoError as exc:
            self.write("")
            self.write(f"error: {exc}")
            if not parts:
                self.history.pop()
                return
        else:
            self.write("")
        self.history.append({"role": "assistant", "content": "".join(parts)})

    def run(self) -> int:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        self.write(f"(talking to {self.persona.display_name}; /help for commands)")
        while True:
            try:
                line = input(f"{self.persona.id}> ")
            except EOFError:
                self.write("")
                return 0
            except KeyboardInterrupt:
                self.write("")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            self.reply(line)


def cmd_chat(client: CameoClient, args: argparse.Namespace) -> int:
    personas = client.personas(include_base=True)
    persona = next((p for p in personas if p.id == args.persona), None)
    if persona is None:
        known = ", ".join(p.id for p in personas) or "none"
        _err(f"error: unknown persona '{args.persona}'; the server has: {known}")
        return 1
    if args.message is None:
        return ChatSession(client, persona, personas, args, sys.stdout).run()
    message = sys.stdin.read() if args.message == "-" else args.message
    params = {"system": args.system, "max_tokens": args.max_tokens,
              "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    if args.no_stream:
        print(client.chat(persona.id, message, **params).text)
        return 0
    try:
        for delta in client.stream_text(persona.id, message, **params):
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


COMMANDS = {"chat": cmd_chat, "personas": cmd_personas, "upload": cmd_upload, "rm": cmd_rm,
            "import-card": cmd_import_card}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = _split_train(argv)
    if split is not None:
        leading, rest = split
        try:  # the leading connection flags are checked, then ignored: training is local
            build_parser().parse_args([*leading, "personas"])
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
        return cmd_train(rest)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    url = getattr(args, "url", None) or os.environ.get("CAMEO_URL") or DEFAULT_URL
    api_key = getattr(args, "api_key", None) or os.environ.get("CAMEO_API_KEY") or None
    admin_key = getattr(args, "admin_key", None) or os.environ.get("CAMEO_ADMIN_KEY") or None
    timeout = getattr(args, "timeout", None) or 300.0
    try:
        with CameoClient(url, api_key, admin_key=admin_key, timeout=timeout) as client:
            return COMMANDS[args.command](client, args)
    except CameoError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
