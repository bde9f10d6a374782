"""The web chat at `/`, driven in headless Chromium (Debian's) through Playwright.

Every page runs under the server's Content-Security-Policy: a violation fails the test like a
JavaScript error. Screenshots land in test-artifacts/ (git-ignored). Skipped, with the reason,
when the `playwright` package or a chromium binary is missing (`make install-test` installs
both).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import ADMIN_KEY, USER_KEY

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="needs the playwright package (pip install playwright)")

CHROMIUM = os.environ.get("CAMEO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs a chromium binary (Debian: apt-get install chromium; or set "
                "CAMEO_CHROMIUM)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

LAST_REPLY = "() => [...document.querySelectorAll('#messages .message-assistant')].pop()"
REPLY_DONE = f"""() => {{ const m = ({LAST_REPLY})();
  return m && ['done', 'stopped', 'cut', 'error'].includes(m.dataset.state); }}"""
REPLY_STARTED = f"""() => {{ const m = ({LAST_REPLY})();
  return m && m.dataset.state === 'streaming' && m.querySelector('.text').textContent.length > 0; }}"""
# Records every text the reply being streamed shows, to prove it grows piece by piece.
WATCH_STREAM = f"""() => {{
  window.__snapshots = [];
  const box = document.querySelector('#messages');
  new MutationObserver(() => {{
    const m = ({LAST_REPLY})();
    if (m && m.dataset.state === 'streaming') window.__snapshots.push(m.querySelector('.text').textContent);
  }}).observe(box, {{ subtree: true, childList: true, characterData: true }});
}}"""
UNLABELLED = """() => [...document.querySelectorAll('input, textarea, select, button')]
  .filter((el) => el.type !== 'hidden')
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.id || el.outerHTML.slice(0, 80))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Web:
    """A page of the web chat plus what it sent and what went wrong in it."""

    def __init__(self, page: Any, artifacts: Path) -> None:
        self.page = page
        self.artifacts = artifacts
        self.chat_bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.page_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("console", self._console)
        page.on("request", self._record)

    def _console(self, message: Any) -> None:
        """A CSP violation (Chromium logs one per refused load) counts as a page error."""
        if "Content Security Policy" in message.text:
            self.page_errors.append(message.text)

    def _record(self, request: Any) -> None:
        if "/v1/" in request.url:
            self.headers.append({"url": request.url, **request.headers})
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            self.chat_bodies.append(json.loads(request.post_data or "{}"))

    def open(self, url: str) -> Web:
        response = self.page.goto(url + "/")
        assert response is not None  # the page runs under the server's CSP (see __init__)
        assert "default-src 'self'" in response.headers.get("content-security-policy", "")
        return self

    def wait_personas(self, count: int = 3) -> None:
        self.page.wait_for_function(
            f"() => document.querySelectorAll('#persona-list .persona-card').length >= {count}")

    def settings(self, max_tokens: int | None = None, temperature: float | None = None) -> None:
        if self.page.is_visible("#menu-toggle") and not self.page.is_visible("#settings-panel"):
            self.page.click("#menu-toggle")  # a phone: the settings are in the drawer
        panel = self.page.locator("#settings-panel")
        if not panel.evaluate("el => el.open"):
            self.page.click("#settings-panel > summary")
        if max_tokens is not None:
            self.page.fill("#max-tokens", str(max_tokens))
        if temperature is not None:
            self.page.fill("#temperature", str(temperature))

    def pick(self, persona: str) -> None:
        self.page.check(f"#persona-{persona}")

    def send(self, text: str) -> None:
        self.page.fill("#message-input", text)
        self.page.press("#message-input", "Enter")

    def wait_reply(self, timeout: float = 120_000) -> dict[str, str]:
        self.page.wait_for_function(REPLY_DONE, timeout=timeout)
        return self.page.evaluate(f"""() => {{ const m = ({LAST_REPLY})();
            return {{ who: m.querySelector('.who').textContent, state: m.dataset.state,
                     text: m.querySelector('.text').textContent,
                     meta: m.querySelector('.meta').textContent }}; }}""")

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"web-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def web(browser: Any, artifacts: Path) -> Iterator[Web]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(60_000)
    web = Web(page, artifacts)
    yield web
    context.close()
    assert not web.page_errors, f"JavaScript errors: {web.page_errors}"


def test_pick_chat_stream_and_switch_persona(web: Web, server_url: str) -> None:
    web.open(server_url).wait_personas()
    page = web.page
    for name in ("alpha", "bravo", "charlie"):  # the picker shows the /v1/models extras
        card = page.locator(f".persona-card[data-persona='{name}']")
        assert card.locator(".persona-name").inner_text() == name.title()
        assert card.locator(".persona-description").inner_text() == f"test persona {name}"
        assert card.locator(".persona-greeting").inner_text() == f"Hello from {name}"
    assert "Connected" in page.inner_text("#server-status")

    web.pick("alpha")
    page.wait_for_selector("#messages .message-greeting")
    assert page.inner_text("#messages .message-greeting .text") == "Hello from alpha"
    assert page.inner_text("#current-name") == "Alpha"
    web.settings(max_tokens=16, temperature=0)

    page.evaluate(WATCH_STREAM)
    web.send("Tell me about the sea.")
    first = web.wait_reply()
    assert first["state"] == "done" and first["who"] == "Alpha" and first["text"]
    snapshots = [s for s in page.evaluate("window.__snapshots") if s]
    assert len(set(snapshots)) >= 2, f"the reply did not arrive in pieces: {snapshots}"
    assert all(first["text"].startswith(s) for s in snapshots)
    assert "tokens" in first["meta"]
    web.shot("1-alpha-reply")

    web.pick("bravo")  # mid-conversation: the history stays, the next reply is bravo's
    page.wait_for_selector("#messages .message-note")
    assert "Now talking to Bravo" in page.inner_text("#messages .message-note")
    assert page.inner_text("#current-name") == "Bravo"
    web.send("And about the mountains?")
    second = web.wait_reply()
    assert second["state"] == "done" and second["who"] == "Bravo"
    assert second["text"] and second["text"] != first["text"]
    web.shot("2-bravo-reply")

    assert [b["model"] for b in web.chat_bodies] == ["alpha", "bravo"]
    assert all(b["stream"] is True and b["max_tokens"] == 16 and b["temperature"] == 0
               for b in web.chat_bodies)
    # each reply names its persona: the server tells bravo these turns were alpha's
    assert web.chat_bodies[1]["messages"] == [
        {"role": "assistant", "content": "Hello from alpha", "name": "alpha"},
        {"role": "user", "content": "Tell me about the sea."},
        {"role": "assistant", "content": first["text"], "name": "alpha"},
        {"role": "user", "content": "And about the mountains?"},
    ]

    page.click("#new-chat")
    assert page.locator("#messages .message").count() == 1  # bravo's greeting only
    assert page.inner_text("#messages .message-greeting .text") == "Hello from bravo"


def test_stop_button_cancels_the_stream(web: Web, server_url: str) -> None:
    web.open(server_url).wait_personas()
    page = web.page
    web.pick("charlie")
    web.settings(max_tokens=400)
    web.send("Write a very long story about a dragon.")
    page.wait_for_function(REPLY_STARTED, timeout=120_000)
    assert page.is_enabled("#stop") and page.is_disabled("#send")
    page.click("#stop")
    stopped = web.wait_reply(timeout=10_000)
    assert stopped["state"] == "stopped" and "stopped" in stopped["meta"]
    time.sleep(1.5)  # nothing more arrives once stopped
    assert page.inner_text("#messages .message-assistant:last-child .text") == stopped["text"]
    assert page.is_enabled("#send") and page.is_disabled("#stop")
    assert page.locator("#error").is_hidden()
    web.shot("3-stopped")


def test_keyboard_alone(web: Web, server_url: str) -> None:
    web.open(server_url).wait_personas()
    page = web.page
    assert page.evaluate(UNLABELLED) == []

    page.keyboard.press("Tab")  # the skip link comes first and jumps to the message box
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "message-input"

    page.reload()
    web.wait_personas()
    for _ in range(10):  # Tab into the persona group
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == "persona":
            break
    else:
        pytest.fail("Tab never reached the persona picker")
    before = page.evaluate("document.activeElement.value")
    page.keyboard.press("ArrowDown")
    after = page.evaluate("document.activeElement.value")
    assert after != before
    page.wait_for_function(f"document.querySelector('#current-name').textContent === "
                           f"{json.dumps(after.title())}")

    for _ in range(10):  # on to the message box
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "message-input":
            break
    else:
        pytest.fail("Tab never reached the message box")
    page.keyboard.type("Hello there")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("How are you?")
    assert web.chat_bodies == []
    web.settings(max_tokens=400)
    page.focus("#message-input")
    page.keyboard.press("Enter")
    page.wait_for_function(REPLY_STARTED, timeout=120_000)
    page.keyboard.press("Escape")
    stopped = web.wait_reply(timeout=10_000)
    assert stopped["state"] == "stopped"
    assert web.chat_bodies[0]["model"] == after
    assert web.chat_bodies[0]["messages"][-1]["content"] == "Hello there\nHow are you?"
    web.shot("4-keyboard")


def test_api_errors_are_shown_clearly(web: Web, server_url: str) -> None:
    web.open(server_url).wait_personas()
    page = web.page
    web.pick("alpha")
    web.settings(max_tokens=100_000)
    web.send("Hi")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error .error-text")  # in plain words; the API's behind Details
    assert "too long" in message and "maximum context length" in message
    assert "context_length_exceeded" not in message
    page.click("#error .error-details > summary")
    detail = page.inner_text("#error .error-detail")
    assert "context_length_exceeded" in detail and "HTTP 400" in detail
    assert page.is_enabled("#send")
    web.shot("5-error")


def test_api_key_is_stored_and_sent(browser: Any, artifacts: Path,
                                    keyed_server_url: str) -> None:
    context = browser.new_context(viewport=DESKTOP)
    web = Web(context.new_page(), artifacts)
    page = web.page
    try:
        web.open(keyed_server_url)
        page.wait_for_selector("#error:not([hidden])")
        assert "API key" in page.inner_text("#error .error-text")
        page.click("#error .error-details > summary")
        assert "HTTP 401" in page.inner_text("#error .error-detail")
        assert "Connected" not in page.inner_text("#server-status")
        web.shot("6-key-missing")

        web.settings(max_tokens=8)
        page.fill("#api-key", USER_KEY)
        page.press("#api-key", "Tab")  # change: the persona list reloads with the key
        web.wait_personas()
        page.reload()  # the key survives a reload (localStorage)
        web.wait_personas()
        assert page.input_value("#api-key") == USER_KEY
        web.pick("alpha")
        web.send("Hi")
        assert web.wait_reply()["state"] == "done"
        sent = [h for h in web.headers if h["url"].endswith(("/v1/models", "/completions"))]
        assert sent[-1].get("authorization") == f"Bearer {USER_KEY}"
        assert any(h.get("authorization") == f"Bearer {USER_KEY}" and h["url"].endswith(
            "/v1/models") for h in sent)

        page.click("#admin-panel > summary")  # the user key may not manage adapters
        page.wait_for_selector("#adapter-status.bad")
        assert "admin key" in page.inner_text("#adapter-status")
        page.fill("#admin-key", ADMIN_KEY)
        page.click("#refresh-adapters")
        page.wait_for_selector("#adapter-list li")
        assert "alpha" in page.inner_text("#adapter-list")
        web.shot("7-admin-list")
    finally:
        context.close()
    assert not web.page_errors


def test_phone_layout(browser: Any, artifacts: Path, server_url: str) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    web = Web(context.new_page(), artifacts)
    page = web.page
    try:
        web.open(server_url).wait_personas()
        web.pick("alpha")
        web.settings(max_tokens=8)
        page.click("#settings-panel > summary")  # close it again, and the drawer
        page.click("#menu-toggle")
        web.send("Hi!")
        assert web.wait_reply()["state"] == "done"
        page.evaluate("window.scrollTo(0, 0)")
        web.shot("8-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways ({width}px)"
        for selector in ("#message-input", "#send", "#stop", "#persona-list"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1, selector
        send = page.locator("#send").bounding_box()
        assert send and send["height"] >= 36  # big enough to tap
    finally:
        context.close()
    assert not web.page_errors


def test_admin_upload_with_progress_then_chat(web: Web, server_url: str, upload_dir: Path,
                                              uploaded: list[str]) -> None:
    uploaded.append("webup")
    web.open(server_url).wait_personas()
    page = web.page
    page.click("#admin-panel > summary")
    page.wait_for_selector("#adapter-list li")  # loopback: no admin key needed
    page.fill("#upload-name", "webup")
    page.set_input_files("#upload-config", str(upload_dir / "adapter_config.json"))
    page.set_input_files("#upload-model", str(upload_dir / "adapter_model.safetensors"))
    page.set_input_files("#upload-persona", str(upload_dir / "persona.json"))
    page.check("#upload-replace")
    page.evaluate("""() => { window.__progress = [];
      const bar = document.querySelector('#upload-progress');
      new MutationObserver(() => window.__progress.push(bar.value))
        .observe(bar, { attributes: true }); }""")
    page.click("#upload-submit")
    page.wait_for_selector("#upload-status.good", timeout=120_000)
    status = page.inner_text("#upload-status")
    assert status.startswith("Uploaded webup") and "rank 8" in status
    assert page.evaluate("document.querySelector('#upload-progress').value") == 100
    web.shot("9-uploaded")

    web.wait_personas(4)  # the list reloaded with the new persona
    card = page.locator(".persona-card[data-persona='webup']")
    assert card.locator(".persona-name").inner_text() == "Webby"
    assert card.locator(".persona-greeting").inner_text() == "Hi, I was uploaded"
    assert "webup" in page.inner_text("#adapter-list")
    web.pick("webup")
    web.settings(max_tokens=8)
    web.send("Who are you?")
    reply = web.wait_reply()
    assert reply["state"] == "done" and reply["who"] == "Webby" and reply["text"]
    assert web.chat_bodies[-1]["model"] == "webup"
    web.shot("10-chat-uploaded")

    page.fill("#upload-name", "webup")  # the same name again without replace: a clear refusal
    page.set_input_files("#upload-config", str(upload_dir / "adapter_config.json"))
    page.set_input_files("#upload-model", str(upload_dir / "adapter_model.safetensors"))
    page.click("#upload-submit")
    page.wait_for_selector("#upload-status.bad")
    assert "Upload failed" in page.inner_text("#upload-status")
    assert "HTTP 409" in page.inner_text("#upload-status")


def test_admin_import_character_card(web: Web, server_url: str, tmp_path: Path,
                                     uploaded: list[str]) -> None:
    from tests.clients._support import card_v2, png_card

    uploaded.extend(["webcard", "webcard-png"])
    card_file = tmp_path / "mira.json"
    card_file.write_text(json.dumps(card_v2("Mira")))
    web.open(server_url).wait_personas()
    page = web.page
    page.click("#admin-panel > summary")
    page.set_input_files("#card-file", str(card_file))
    page.fill("#card-name", "webcard")
    page.click("#import-submit")
    page.wait_for_selector("#import-status.good")
    assert "Imported Mira" in page.inner_text("#import-status")
    web.wait_personas(4)
    card = page.locator(".persona-card[data-persona='webcard']")
    assert card.locator(".persona-name").inner_text() == "Mira"
    assert card.locator(".persona-greeting").inner_text() == "Welcome to the lighthouse! I am Mira."

    page.set_input_files("#card-file", str(png_card(tmp_path / "iris.png", card_v2("Iris"))))
    page.fill("#card-name", "webcard-png")
    page.click("#import-submit")
    page.wait_for_selector("#import-status.good")
    web.wait_personas(5)
    assert page.locator(".persona-card[data-persona='webcard-png'] .persona-name"
                        ).inner_text() == "Iris"

    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": "world"}')
    page.set_input_files("#card-file", str(bad))
    page.click("#import-submit")
    page.wait_for_selector("#import-status.bad")
    assert "not a Character Card V2" in page.inner_text("#import-status")
    web.shot("11-card-imported")
