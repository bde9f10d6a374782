"""The web chat's conversations and replies, in headless Chromium against a real server.

Saved conversations (listed, renamed, deleted, kept over a reload), the per-message actions
(copy, regenerate, edit and resend, delete), replies that do not finish (stopped, the server
gone mid-stream, the stream cut before `[DONE]`) marked cut with a Retry button, the header's
connection state across a server stop and restart, a persona deleted under the page, and errors
in plain words with the API's detail behind a toggle. The model is the embedded one; replies are
kept short. Also the helpers the other `test_web_*.py` modules share: `browse` (pages with the
CSP and script errors checked), `seed` (saved conversations put into localStorage), `shot`
(screenshots under tmp_path, copied to /tmp/web-shots/ to look at) and `upload_persona`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.api.app import create_app
from server.composition import Cameo
from server.settings import Settings
from tests.clients.conftest import mount_web
from tests.clients.test_web import REPLY_DONE, REPLY_STARTED, Web, browser  # noqa: F401
from tests.helpers import free_port

# Minute-long browser sessions: in the slow suite (CI runs it too), like the other heavy HTTP suites.
pytestmark = pytest.mark.slow

SHOTS = Path("/tmp/web-shots")
WIDE = {"width": 1440, "height": 900}
SMALL_PHONE = {"width": 375, "height": 667}
STORED = """() => JSON.parse(localStorage.getItem('cameo.conversation.'
                                                 + localStorage.getItem('cameo.current')))"""
REPLIES = "#messages .message-assistant:not(.message-greeting)"

Browse = Callable[..., Web]


@pytest.fixture
def browse(browser: Any, tmp_path: Path) -> Iterator[Browse]:  # noqa: F811
    """`browse(viewport=..., **context options)`: a new page; no CSP violation or script error
    may happen in it (checked after the test)."""
    opened: list[tuple[Any, Web]] = []

    def make(viewport: dict[str, int] = WIDE, **options: Any) -> Web:
        context = browser.new_context(viewport=viewport, **options)
        web = Web(context.new_page(), tmp_path)
        web.page.set_default_timeout(60_000)
        opened.append((context, web))
        return web

    yield make
    for context, _ in opened:
        context.close()
    errors = [e for _, web in opened for e in web.page_errors]
    assert not errors, f"JavaScript errors or CSP violations: {errors}"


def shot(web: Web, tmp_path: Path, name: str, full_page: bool = False) -> Path:
    """A screenshot under tmp_path, copied to /tmp/web-shots/ for people to look at."""
    path = tmp_path / f"web-{name}.png"
    web.page.screenshot(path=str(path), full_page=full_page)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def conversation(cid: str, title: str, persona: str,
                 messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A saved conversation as the page stores it (see clients/web/js/store.js)."""
    return {"id": cid, "title": title, "titled": True, "persona": persona, "created": 1,
            "updated": int(time.time() * 1000),
            "messages": [{"id": f"{cid}-{i}", **m} for i, m in enumerate(messages)]}


def seed(web: Web, url: str, conversations: list[dict[str, Any]]) -> None:
    """Open the page with `conversations` saved (the first one open), as a past visit left
    them. The storage is written from a document of the same origin that runs no script of the
    app (the health probe's JSON): a chat page still starting would overwrite it."""
    web.page.goto(url + "/health")
    web.page.evaluate("""(conversations) => {
      localStorage.clear();
      for (const c of conversations) {
        localStorage.setItem('cameo.conversation.' + c.id, JSON.stringify(c));
      }
      localStorage.setItem('cameo.conversations', JSON.stringify(conversations.map(
        (c) => ({ id: c.id, title: c.title, persona: c.persona, updated: c.updated }))));
      localStorage.setItem('cameo.current', conversations[0].id);
    }""", conversations)
    web.open(url)


def upload_persona(url: str, name: str, **card: Any) -> httpx.Response:
    """A prompt-only persona (persona.json alone) through the admin upload route (loopback)."""
    files = {"persona": ("persona.json", json.dumps(card), "application/json")}
    return httpx.post(f"{url}/v1/adapters", data={"name": name, "replace": "true"},
                      files=files, timeout=60)


def titles(web: Web) -> list[str]:
    return web.page.locator("#conversation-list .conversation-title").all_inner_texts()


def stored(web: Web) -> dict[str, Any]:
    value: dict[str, Any] = web.page.evaluate(STORED)
    return value


def test_conversations_are_saved_listed_renamed_and_deleted(browse: Browse, server_url: str,
                                                            tmp_path: Path) -> None:
    web = browse()
    page = web.page
    web.open(server_url).wait_personas()
    assert titles(web) == [] and page.is_visible("#conversations-empty")
    web.pick("alpha")
    web.settings(max_tokens=8)
    web.send("First chat, about the sea")
    first = web.wait_reply()
    assert first["state"] == "done"
    assert titles(web) == ["First chat, about the sea"]
    assert page.get_attribute("#conversation-list li", "aria-current") == "true"

    page.reload()  # the conversation is back, as it was
    web.wait_personas()
    assert page.inner_text("#messages .message-user .text") == "First chat, about the sea"
    assert page.inner_text(f"{REPLIES} .text") == first["text"]
    assert page.inner_text("#current-name") == "Alpha"

    page.click("#new-chat")
    assert page.locator(REPLIES).count() == 0
    web.pick("bravo")
    web.send("Second chat")
    assert web.wait_reply()["state"] == "done"
    assert titles(web) == ["Second chat", "First chat, about the sea"]  # newest first

    page.click("#conversation-list li:nth-child(2) .conversation-open")  # back to the first
    page.wait_for_function("() => document.querySelector('#current-name').textContent === 'Alpha'")
    assert page.inner_text("#messages .message-user .text") == "First chat, about the sea"

    page.click("#conversation-list li:nth-child(2) [data-action=rename]")
    page.fill(".conversation-rename", "Sea talk")
    page.press(".conversation-rename", "Enter")
    assert titles(web) == ["Second chat", "Sea talk"]
    shot(web, tmp_path, "chat-1-conversations")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#conversation-list li:nth-child(1) [data-action=delete]")
    assert titles(web) == ["Sea talk"]
    page.reload()
    web.wait_personas()
    assert titles(web) == ["Sea talk"]
    assert page.inner_text("#messages .message-user .text") == "First chat, about the sea"


def test_copy_regenerate_edit_and_delete_a_message(browse: Browse, server_url: str,
                                                   tmp_path: Path) -> None:
    web = browse(permissions=["clipboard-read", "clipboard-write"])
    page = web.page
    web.open(server_url).wait_personas()
    web.pick("alpha")
    web.settings(max_tokens=8, temperature=1)
    web.send("Hello *there*")
    reply = web.wait_reply()
    first_id = page.get_attribute(REPLIES, "data-id")

    page.click(f"{REPLIES} [data-action=copy]")
    page.wait_for_selector(f"{REPLIES} [data-action=copy]:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == stored(web)["messages"][2]["content"]

    page.click(f"{REPLIES} [data-action=regenerate]")  # the same history, a new reply
    page.wait_for_function(f"""() => {{ const m = document.querySelector('{REPLIES}');
        return m && m.dataset.id !== {json.dumps(first_id)} && m.dataset.state === 'done'; }}""")
    assert len(web.chat_bodies) == 2
    assert web.chat_bodies[1]["messages"] == web.chat_bodies[0]["messages"]
    assert page.locator(REPLIES).count() == 1
    assert [m["role"] for m in stored(web)["messages"]] == ["assistant", "user", "assistant"]

    page.click("#messages .message-user [data-action=edit]")
    page.fill("#messages .message-user .editor-input", "Hello again, **friend**")
    shot(web, tmp_path, "chat-2-editing")
    page.click("#messages .message-user [data-action=save-edit]")
    page.wait_for_function(f"() => document.querySelector('{REPLIES}')?.dataset.state === 'done'")
    assert web.chat_bodies[2]["messages"][-1] == {"role": "user",
                                                  "content": "Hello again, **friend**"}
    assert page.inner_text("#messages .message-user .text strong") == "friend"
    assert page.locator(REPLIES).count() == 1
    assert stored(web)["messages"][1]["content"] == "Hello again, **friend**"

    page.click(f"{REPLIES} [data-action=delete]")
    assert page.locator(REPLIES).count() == 0
    assert [m["role"] for m in stored(web)["messages"]] == ["assistant", "user"]
    page.click("#messages .message-user [data-action=delete]")
    assert page.locator("#messages .message-user").count() == 0
    assert [m["role"] for m in stored(web)["messages"]] == ["assistant"]  # the greeting
    page.reload()  # deletions are saved too
    web.wait_personas()
    assert page.locator("#messages .message-user").count() == 0
    assert reply["state"] == "done" and len(web.chat_bodies) == 3


def test_a_stopped_reply_is_marked_cut_and_can_be_retried(browse: Browse, server_url: str,
                                                          tmp_path: Path) -> None:
    web = browse()
    page = web.page
    web.open(server_url).wait_personas()
    web.pick("charlie")
    web.settings(max_tokens=400)
    web.send("Write a very long story about a dragon.")
    page.wait_for_function(REPLY_STARTED, timeout=120_000)
    page.click("#stop")
    stopped = web.wait_reply(timeout=10_000)
    assert stopped["state"] == "stopped" and stopped["meta"].startswith("Cut short")
    assert page.is_visible(f"{REPLIES} [data-action=retry]")
    assert page.locator("#error").is_hidden()  # a stop is no error
    shot(web, tmp_path, "chat-3-stopped")

    page.reload()  # still marked cut after a reload
    web.wait_personas()
    assert page.get_attribute(REPLIES, "data-state") == "stopped"
    web.settings(max_tokens=8)
    page.click(f"{REPLIES} [data-action=retry]")
    page.wait_for_function(f"() => document.querySelector('{REPLIES}')?.dataset.state === 'done'")
    assert web.chat_bodies[-1]["messages"] == web.chat_bodies[0]["messages"]
    assert page.locator(REPLIES).count() == 1
    assert page.locator(f"{REPLIES} [data-action=retry]").count() == 0


def test_a_stream_cut_before_done_is_marked_cut(browse: Browse, server_url: str) -> None:
    """The real server's reply, its end (the `[DONE]` event) lost on the way, as a proxy that
    drops the connection would deliver it."""
    web = browse()
    page = web.page

    def cut(route: Any) -> None:
        response = route.fetch()
        body = response.text()
        route.fulfill(response=response, body=body[:body.rindex("data: [DONE]")])

    page.route("**/v1/chat/completions", cut)
    web.open(server_url).wait_personas()
    web.pick("alpha")
    web.settings(max_tokens=8)
    web.send("Hi")
    reply = web.wait_reply()
    assert reply["state"] == "cut" and reply["text"]
    assert "connection was lost" in reply["meta"]
    assert "lost in the middle of the reply" in page.inner_text("#error .error-text")
    assert page.is_visible(f"{REPLIES} [data-action=retry]")
    page.unroute("**/v1/chat/completions")
    page.click("#error-retry")  # "Try again" under the message does what Retry does
    page.wait_for_function(f"() => document.querySelector('{REPLIES}')?.dataset.state === 'done'")
    assert page.locator(REPLIES).count() == 1


class Restartable:
    """The shared cameo behind a uvicorn of its own on a fixed port, to stop and start again.
    Stop it only while no reply streams (a stop waits for running requests)."""

    def __init__(self, settings: Settings, cameo: Cameo) -> None:
        self.app = mount_web(create_app(settings, cameo))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="critical")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(30)
            assert not self.thread.is_alive(), "uvicorn did not stop"
            self.server = None


@pytest.fixture
def restartable(embedded_settings: Settings, cameo: Cameo) -> Iterator[Restartable]:
    server = Restartable(embedded_settings, cameo)
    server.start()
    yield server
    with contextlib.suppress(AssertionError):
        server.stop()


CONNECTED = "() => document.querySelector('#server-status').textContent.includes('Connected')"
NOT_CONNECTED = f"() => !({CONNECTED})()"


def test_the_header_follows_a_server_stop_and_restart(browse: Browse, restartable: Restartable,
                                                      tmp_path: Path) -> None:
    web = browse()
    page = web.page
    web.open(restartable.url).wait_personas()
    web.pick("alpha")
    web.settings(max_tokens=8)
    assert "Connected" in page.inner_text("#server-status")
    restartable.stop()
    page.wait_for_function(NOT_CONNECTED, timeout=15_000)  # found out by polling, unasked
    assert "Not connected" in page.inner_text("#server-status")
    assert page.get_attribute("#server-status", "data-state") == "offline"
    web.send("Hello?")  # a message sent meanwhile fails in plain words, and stays
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error .error-text").startswith("Cannot reach the Cameo server")
    shot(web, tmp_path, "chat-4-server-gone")

    restartable.start()
    page.wait_for_function(CONNECTED, timeout=20_000)
    page.click("#error-retry")
    assert web.wait_reply()["state"] == "done"
    assert web.chat_bodies[-1]["messages"][-1]["content"] == "Hello?"


class CuttableProxy:
    """A TCP forwarder in front of a server whose connections can be reset all at once: a
    network failure, for the browser and the server alike."""

    def __init__(self, upstream: str) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every connection now (RST, not a clean close)."""
        with self.lock:
            sockets, self.open = self.open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(server_url: str) -> Iterator[CuttableProxy]:
    forwarder = CuttableProxy(server_url)
    yield forwarder
    forwarder.close()


def test_a_network_failure_mid_reply_is_marked_cut(browse: Browse, proxy: CuttableProxy,
                                                   tmp_path: Path) -> None:
    web = browse()
    page = web.page
    web.open(proxy.url).wait_personas()
    web.pick("charlie")
    web.settings(max_tokens=400)
    web.send("Write a very long story about a dragon.")
    page.wait_for_function(REPLY_STARTED, timeout=120_000)
    proxy.cut()
    cut = web.wait_reply(timeout=30_000)
    assert cut["state"] == "cut" and "connection was lost" in cut["meta"] and cut["text"]
    assert page.is_visible(f"{REPLIES} [data-action=retry]")
    assert "lost in the middle of the reply" in page.inner_text("#error .error-text")
    shot(web, tmp_path, "chat-7-network-failed")

    page.wait_for_function(CONNECTED, timeout=20_000)  # the next probe finds the server again
    web.settings(max_tokens=8)
    page.click(f"{REPLIES} [data-action=retry]")
    page.wait_for_function(f"() => document.querySelector('{REPLIES}')?.dataset.state === 'done'")
    assert web.chat_bodies[-1]["messages"] == web.chat_bodies[0]["messages"]


def test_a_persona_deleted_under_the_page(browse: Browse, server_url: str, tmp_path: Path,
                                          uploaded: list[str]) -> None:
    uploaded.append("gone-soon")
    assert upload_persona(server_url, "gone-soon", display_name="Gone Soon",
                          greeting="I will not stay long.").status_code == 201
    web = browse()
    page = web.page
    web.open(server_url).wait_personas(4)
    web.pick("gone-soon")
    web.settings(max_tokens=8)
    assert httpx.delete(f"{server_url}/v1/adapters/gone-soon", timeout=30).status_code == 200

    web.send("Are you still there?")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error .error-text")
    assert "“Gone Soon” is no longer on the server" in text and "pick another persona" in text
    page.wait_for_selector(".persona-card[data-persona='gone-soon']", state="detached")
    page.click("#error .error-details > summary")
    detail = page.inner_text("#error .error-detail")
    assert "HTTP 404" in detail and "model_not_found" in detail
    assert "Connected · 3 personas" in page.inner_text("#server-status")  # the server is there
    assert page.inner_text("#current-name").startswith("no one yet")
    shot(web, tmp_path, "chat-5-persona-gone")

    web.pick("alpha")  # another persona, then "Try again" sends the same message
    page.click("#error-retry")
    assert web.wait_reply()["state"] == "done"
    assert web.chat_bodies[-1]["model"] == "alpha"
    assert web.chat_bodies[-1]["messages"][-1]["content"] == "Are you still there?"


def test_errors_read_in_plain_words(browse: Browse, server_url: str, tmp_path: Path) -> None:
    web = browse()
    page = web.page
    web.open(server_url).wait_personas()
    web.pick("alpha")
    web.settings(max_tokens=100_000)
    web.send("Hi")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error .error-text")
    assert text.startswith("The conversation and the reply asked for are too long")
    assert "HTTP" not in text and "_" not in text  # no status, no error code in the sentence
    assert page.is_hidden("#error .error-detail")  # behind the toggle
    page.click("#error .error-details > summary")
    assert "context_length_exceeded" in page.inner_text("#error .error-detail")
    shot(web, tmp_path, "chat-6-error")
    web.settings(max_tokens=8)  # what the sentence says to do, then "Try again"
    page.click("#error-retry")
    assert web.wait_reply()["state"] == "done"
    assert page.locator("#error").is_hidden()
