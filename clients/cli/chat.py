"""`cameo chat` and `cameo personas`: talk to the personas and list them.

Contract: `add_commands` declares both commands; `cmd_chat` sends one message (`-m`) or runs
`ChatSession`, the interactive loop, in which `/persona NAME` switches persona and keeps the
conversation and Ctrl-C stops a streaming reply (closing the stream stops the generation on the
server). The conversation lives here, in the client: the server keeps no chat state.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, TextIO

from clients.cli.output import err, print_personas
from clients.client import CameoClient
from clients.types import CameoError, Persona

CHAT_HELP = """commands:
  /persona NAME   talk to another persona (the conversation goes on)
  /personas       list the personas
  /reset          start the conversation again
  /help           this help
  /quit           leave (also Ctrl-D); Ctrl-C stops a reply that is streaming"""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
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
    chat.set_defaults(run=cmd_chat)

    personas = commands.add_parser("personas", parents=[common], help="list the personas")
    personas.add_argument("--json", action="store_true", help="print the raw JSON entries")
    personas.add_argument("--all", action="store_true", help="include the base model")
    personas.set_defaults(run=cmd_personas)


def cmd_personas(client: CameoClient, args: argparse.Namespace) -> int:
    personas = client.personas(include_base=args.all)
    if args.json:
        print(json.dumps([dict(p.raw) for p in personas], indent=2))
    else:
        print_personas(personas, sys.stdout)
    return 0


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"system": args.system, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}


def cmd_chat(client: CameoClient, args: argparse.Namespace) -> int:
    personas = client.personas(include_base=True)
    persona = next((p for p in personas if p.id == args.persona), None)
    if persona is None:
        known = ", ".join(p.id for p in personas) or "none"
        err(f"error: unknown persona '{args.persona}'; the server has: {known}")
        return 1
    if args.message is None:
        return ChatSession(client, persona, personas, args, sys.stdout).run()
    message = sys.stdin.read() if args.message == "-" else args.message
    if args.no_stream:
        print(client.chat(persona.id, message, **_params(args)).text)
        return 0
    try:
        for delta in client.stream_text(persona.id, message, **_params(args)):
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


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
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/help":
            self.write(CHAT_HELP)
        elif name == "/reset":
            self.reset()
        elif name == "/personas":
            self.list_personas()
        elif name == "/persona":
            self.switch(rest.strip())
        else:
            self.write(f"unknown command {name}; /help lists them")
        return True

    def list_personas(self) -> None:
        try:
            self.personas = self.client.personas(include_base=True)
        except CameoError as exc:
            self.write(f"error: {exc}")
        else:
            print_personas(self.personas, self.out)

    def switch(self, name: str) -> None:
        if not name:
            self.write(f"talking to {self.persona.id}; /persona NAME switches")
            return
        found = self.find(name)
        if found is None:
            known = ", ".join(p.id for p in self.personas if not p.is_base)
            self.write(f"unknown persona '{name}'; known: {known}")
            return
        self.persona = found
        self.write(f"(now talking to {found.display_name})")
        if not any(m["role"] == "user" for m in self.history):
            self.reset(announce=False)

    def reply(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self.out.write(f"{self.persona.display_name}: ")
        self.out.flush()
        parts: list[str] = []
        try:
            self._receive(parts)
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

    def _receive(self, parts: list[str]) -> None:
        """The reply into `parts` (and on the screen), streamed unless --no-stream."""
        if self.args.no_stream:
            parts.append(self.client.chat(self.persona.id, self.history, **_params(self.args)).text)
            self.out.write(parts[-1])
            return
        stream = self.client.stream_text(self.persona.id, self.history, **_params(self.args))
        try:
            for delta in stream:
                parts.append(delta)
                self.out.write(delta)
                self.out.flush()
        finally:
            stream.close()  # closes the connection: the server stops generating

    def run(self) -> int:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        self.write(f"(talking to {self.persona.display_name}; /help for commands)")
        while True:
            try:
                line = input(f"{self.persona.id}> ").strip()
            except EOFError:
                self.write("")
                return 0
            except KeyboardInterrupt:
                self.write("")
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
            elif line:
                self.reply(line)
