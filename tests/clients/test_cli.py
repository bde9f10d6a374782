"""The `cameo` command line against a real server; interactive chat through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from clients.cli import main
from tests.clients._support import MAX_TOKENS, card_v2, png_card
from tests.helpers import free_port

pexpect = pytest.importorskip("pexpect", reason="pexpect is needed to drive `cameo chat` in a pty")

REPO = Path(__file__).resolve().parents[2]


def spawn(*args: str, timeout: float = 90):
    """Run `cameo ARGS` (as `python -m clients.cli`) in a pseudo-terminal, with Ctrl-C's
    default action as a terminal's shell starts commands: pytest itself may have been started
    with SIGINT ignored (`make test &` from a script), which children would inherit, and a
    Python started that way never raises KeyboardInterrupt."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "COLUMNS": "120"}
    env.pop("CAMEO_API_KEY", None)
    child = pexpect.spawn(sys.executable, ["-m", "clients.cli", *args], cwd=str(REPO), env=env,
                          encoding="utf-8", timeout=timeout, dimensions=(40, 120),
                          preexec_fn=_default_ctrl_c)
    return child


def _default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(child, marker: str, timeout: float = 90) -> list[tuple[float, str]]:
    """Everything the child prints until `marker`, as (arrival time, text) pieces."""
    seen = child.buffer  # what `expect` already read past its match
    child.buffer = ""
    pieces: list[tuple[float, str]] = [(time.monotonic(), seen)] if seen else []
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in time; got {seen!r}"
        try:
            piece = child.read_nonblocking(4096, timeout=min(left, 5))
        except pexpect.TIMEOUT:
            continue
        pieces.append((time.monotonic(), piece))
        seen += piece
    return pieces


def test_interactive_chat_streams_and_switches_persona(server_url: str) -> None:
    child = spawn("--url", server_url, "chat", "--persona", "alpha", "--max-tokens", "16",
                  "--temperature", "0")
    try:
        child.expect_exact("Alpha: Hello from alpha")  # the greeting opens the conversation
        child.expect_exact("alpha> ")
        child.sendline("Tell me about the sea.")
        child.expect_exact("Alpha: ")
        pieces = read_until(child, "alpha> ")
        reply = ("".join(p for _, p in pieces)).split("alpha> ")[0].strip()
        assert reply, "no reply text"
        with_text = [p for _, p in pieces if p.replace("alpha> ", "").strip()]
        assert len(with_text) >= 2, f"the reply came in one piece, not streamed: {pieces!r}"

        child.sendline("/personas")
        child.expect_exact("test persona bravo")
        child.expect_exact("test persona charlie")
        child.expect_exact("alpha> ")

        child.sendline("/persona nobody")
        child.expect_exact("unknown persona 'nobody'")
        child.expect_exact("alpha> ")

        child.sendline("/persona bravo")
        child.expect_exact("(now talking to Bravo)")
        child.expect_exact("bravo> ")
        child.sendline("And about the mountains?")
        child.expect_exact("Bravo: ")
        bravo = "".join(p for _, p in read_until(child, "bravo> ")).split("bravo> ")[0].strip()
        assert bravo

        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.expect_exact("Bravo: Hello from bravo")
        child.expect_exact("bravo> ")

        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_ctrl_c_stops_a_streaming_reply(server_url: str) -> None:
    child = spawn("--url", server_url, "chat", "--persona", "charlie", "--max-tokens", "400")
    try:
        child.expect_exact("charlie> ")
        for _ in range(5):  # a sampled reply can end before the interrupt reaches it
            stopped_after = _interrupt_a_reply(child)
            if stopped_after is not None:
                break
            child.sendline("/reset")  # a whole reply left in the history would leave no room
            child.expect_exact("charlie> ")  # for the next one's 400 tokens
        else:
            pytest.fail("five replies in a row ended before Ctrl-C reached them")
        child.expect_exact("charlie> ", timeout=30)
        assert stopped_after < 30
        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def _interrupt_a_reply(child: pexpect.spawn) -> float | None:
    """Ask for a long reply and press Ctrl-C while it streams: the seconds until the CLI
    said "[stopped]", or None when the reply had ended first. The interrupt then lands at the
    prompt, which prints a fresh one, or, when it comes while the terminal is being set up for
    the next line, as a character of that line (harmless: it joins the next message)."""
    child.sendline("Write a very long story about a dragon.")
    child.expect_exact("Charlie: ")  # the request is streaming: interrupt at once, as on a
    started = time.monotonic()  # 2-core machine the whole reply can be out before we look again
    child.sendintr()
    if child.expect_exact(["[stopped]", "charlie> "], timeout=30) == 0:
        return time.monotonic() - started
    child.expect_exact(["charlie> ", pexpect.TIMEOUT], timeout=5)
    return None


def test_one_shot_message(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--url", server_url, "chat", "-p", "alpha", "-m", "Hello!",
                 "--max-tokens", str(MAX_TOKENS), "--temperature", "0"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip()
    code = main(["chat", "-p", "alpha", "-m", "Hello!", "--url", server_url,  # flags after too
                 "--max-tokens", str(MAX_TOKENS), "--temperature", "0", "--no-stream"])
    assert code == 0 and capsys.readouterr().out.strip() == out.strip()


def test_one_shot_message_from_stdin_and_env(server_url: str) -> None:
    env = {**os.environ, "CAMEO_URL": server_url}
    done = subprocess.run(
        [sys.executable, "-m", "clients.cli", "chat", "--persona", "bravo", "-m", "-",
         "--max-tokens", str(MAX_TOKENS)],
        input="Hi there", capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_personas_command(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", server_url, "personas"]) == 0
    out = capsys.readouterr().out
    for name in ("alpha", "bravo", "charlie"):
        assert name in out and f"test persona {name}" in out and f"Hello from {name}" in out
    assert main(["--url", server_url, "personas", "--json", "--all"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries[0]["parent"] is None
    assert {"alpha", "bravo", "charlie"} <= {e["id"] for e in entries}


def test_errors_are_clear(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", server_url, "chat", "-p", "nobody", "-m", "Hi"]) == 1
    err = capsys.readouterr().err
    assert "unknown persona 'nobody'" in err and "alpha" in err

    assert main(["--url", server_url, "chat", "-p", "alpha", "-m", "Hi",
                 "--max-tokens", "100000"]) == 1
    err = capsys.readouterr().err
    assert "maximum context length" in err and "context_length_exceeded" in err

    assert main(["--url", f"http://127.0.0.1:{free_port()}", "personas"]) == 1
    assert "cannot reach" in capsys.readouterr().err

    assert main(["chat"]) == 2  # --persona is required
    assert "--persona" in capsys.readouterr().err


def test_upload_of_a_folder_without_an_adapter(server_url: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", server_url, "upload", str(tmp_path), "--name", "x"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_train_forwards_every_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str]] = []
    trainer = types.SimpleNamespace(main=lambda argv: received.append(argv) or 0)
    monkeypatch.setitem(sys.modules, "adapters.training.train", trainer)
    argv = ["--persona", "pirate", "--epochs", "2", "--url", "not-ours", "--help"]
    assert main(["--url", "http://127.0.0.1:1", "train", *argv]) == 0
    assert received == [argv]


def test_train_says_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "adapters.training.train", None)  # import fails
    assert main(["train", "--persona", "pirate"]) == 2
    assert "'cameo train' needs the trainer" in capsys.readouterr().err


def test_upload_rm_and_import_card(server_url: str, upload_dir: Path, tmp_path: Path,
                                   uploaded: list[str]) -> None:
    uploaded.extend(["cliup", "cli-card"])
    child = spawn("--url", server_url, "upload", str(upload_dir), "--name", "cliup", "--replace")
    try:
        child.expect_exact("100%")  # the progress bar, drawn on the terminal
        child.expect_exact("uploaded cliup")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    chat = spawn("--url", server_url, "chat", "--persona", "cliup", "--max-tokens", "8")
    try:
        chat.expect_exact("Webby: Hi, I was uploaded")
        chat.expect_exact("cliup> ")
        chat.sendline("Hello!")
        chat.expect_exact("Webby: ")
        chat.expect_exact("cliup> ")
        chat.sendline("/quit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)

    card = png_card(tmp_path / "mira.png", card_v2("Mira"))
    done = subprocess.run([sys.executable, "-m", "clients.cli", "--url", server_url,
                           "import-card", str(card), "--name", "cli-card"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "imported Mira as 'cli-card'" in done.stdout

    done = subprocess.run([sys.executable, "-m", "clients.cli", "--url", server_url, "rm",
                           "cliup"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deleted cliup" in done.stdout



def _cli(server_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.cli", "--url", server_url, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_import_card_replace_and_names_checked_before_sending(
        server_url: str, upload_dir: Path, tmp_path: Path, uploaded: list[str]) -> None:
    import httpx

    uploaded.append("cli-again")
    card = tmp_path / "card.json"
    card.write_text(json.dumps(card_v2("Mira")))
    assert _cli(server_url, "import-card", str(card), "--name", "cli-again").returncode == 0
    again = _cli(server_url, "import-card", str(card), "--name", "cli-again")
    assert again.returncode == 1 and "already exists" in again.stderr
    replaced = _cli(server_url, "import-card", str(card), "--name", "cli-again", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert httpx.get(f"{server_url}/v1/personas/cli-again").json()["version"] == 2
    for command in (["upload", str(upload_dir), "--name", "Salty Pete"],
                    ["import-card", str(card), "--name", "Salty Pete"]):
        refused = _cli(server_url, *command)
        assert refused.returncode == 2 and "must match" in refused.stderr, refused.stderr
        assert "%" not in refused.stderr  # refused before a byte of the upload was sent
    assert httpx.get(f"{server_url}/v1/personas/Salty Pete").status_code == 404

def test_import_card_of_a_png_without_a_card(server_url: str, tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"\x89PNG\r\n\x1a\n")
    refused = _cli(server_url, "import-card", str(plain))
    assert refused.returncode == 1, refused.stderr
    assert "no character card" in refused.stderr and "no_card" in refused.stderr
    missing = _cli(server_url, "import-card", str(tmp_path / "missing.png"))
    assert missing.returncode == 2 and "missing.png" in missing.stderr


def test_train_help_through_the_entry_point() -> None:
    pytest.importorskip("adapters.training.train", reason="the trainer is not in this checkout")
    done = subprocess.run([sys.executable, "-m", "clients.cli", "train", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--data" in done.stdout and "cameo train" in done.stdout


def test_train_runs_the_real_trainer(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("adapters.training.train", reason="the trainer is not in this checkout")
    assert main(["train", "--help"]) == 0
    assert "--data" in capsys.readouterr().out
