"""The web chat's layout at phone and desktop sizes, in headless Chromium against a real server.

A phone (375x667): the page itself never scrolls, the message list is its one vertical scroll
container, and the message box, Send and Stop stay on screen, also with a long conversation
and with the on-screen keyboard up; the side panel is a drawer. A desktop (1440x900): the
personas are a sidebar that shows them all, the messages get the rest of the width, and the
collapsed settings panels take a line each. Screenshots of each go to /tmp/web-shots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.clients import test_web_chat as chat
from tests.clients.test_web_chat import (
    REPLIES,
    SMALL_PHONE,
    WIDE,
    Browse,
    conversation,
    seed,
    shot,
)

browser, browse = chat.browser, chat.browse  # the fixtures, shared

# Visible elements that scroll vertically (their content is taller than they are).
pytestmark = pytest.mark.slow  # browser sessions at four sizes: the slow suite (CI runs it)

SCROLLERS = """() => [...document.querySelectorAll('*')].filter((el) => {
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  return ['auto', 'scroll'].includes(style.overflowY) && el.scrollHeight > el.clientHeight + 1
    && box.width > 0 && box.height > 0 && style.visibility !== 'hidden';
}).map((el) => el.id || el.className)"""
PAGE_SCROLLS = """() => { window.scrollTo(0, 10000);
  const moved = window.scrollY; window.scrollTo(0, 0);
  return { moved, height: document.documentElement.scrollHeight, inner: window.innerHeight,
           width: document.documentElement.scrollWidth }; }"""


def long_conversation(turns: int = 15, repeat: int = 3) -> dict[str, Any]:
    """Taller than a screen; with repeat=1 and 8 turns still within the test model's context."""
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: what about *the sea*?"})
        messages.append({"role": "assistant", "persona": "alpha", "name": "Alpha", "state": "done",
                         "content": f"**Answer {turn}.** *smiles* "
                                    + "The sea is wide and deep, and it holds more. " * repeat})
    return conversation("long", "A long talk", "alpha", messages)


def box(web: Any, selector: str) -> dict[str, float]:
    found = web.page.locator(selector).bounding_box()
    assert found, f"{selector} is not on screen"
    return dict(found)


def newest_in_view(web: Any) -> None:
    web.page.wait_for_function("""() => {
      const list = document.querySelector('#messages').getBoundingClientRect();
      const last = [...document.querySelectorAll('#messages .message')].pop().getBoundingClientRect();
      return last.bottom <= list.bottom + 1 && last.bottom > list.top; }""", timeout=5_000)


def on_screen(web: Any, selector: str, viewport: dict[str, int]) -> None:
    where = box(web, selector)
    assert where["x"] >= 0 and where["x"] + where["width"] <= viewport["width"] + 0.5, selector
    assert where["y"] >= 0 and where["y"] + where["height"] <= viewport["height"] + 0.5, selector


def test_a_phone_shows_the_message_box_and_one_scrolling_list(browse: Browse, server_url: str,
                                                              tmp_path: Path) -> None:
    web = browse(viewport=SMALL_PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = web.page
    seed(web, server_url, [long_conversation(8, repeat=1), conversation("short", "Short", "bravo", [
        {"role": "user", "content": "Hi"}])])
    web.wait_personas()
    page.wait_for_selector(REPLIES)
    scrolls = page.evaluate(PAGE_SCROLLS)
    assert scrolls["moved"] == 0 and scrolls["height"] <= scrolls["inner"], scrolls
    assert scrolls["width"] <= SMALL_PHONE["width"], scrolls
    assert page.evaluate(SCROLLERS) == ["messages"]
    assert page.evaluate("""() => { const m = document.querySelector('#messages');
        return m.scrollHeight - m.scrollTop - m.clientHeight; }""") < 2  # at the newest message
    for selector in ("#message-input", "#send", "#stop", "#persona-list", "#menu-toggle",
                     "#new-chat"):
        on_screen(web, selector, SMALL_PHONE)
    assert box(web, "#send")["height"] >= 36 and box(web, "#message-input")["height"] >= 40
    assert page.is_hidden("#conversation-list") and page.is_hidden("#settings-panel")
    shot(web, tmp_path, "phone-1-long-chat")

    page.click("#menu-toggle")  # conversations and settings in a drawer over the chat
    page.wait_for_selector("#conversation-list li")
    assert page.locator("#conversation-list .conversation-title").all_inner_texts() == [
        "A long talk", "Short"]
    page.wait_for_function("() => document.querySelector('#drawer').getBoundingClientRect().x >= 0")
    on_screen(web, "#drawer", SMALL_PHONE)  # slid in
    shot(web, tmp_path, "phone-2-drawer")
    page.keyboard.press("Escape")
    page.wait_for_selector("#drawer", state="hidden")

    web.settings(max_tokens=8)
    page.click("#menu-toggle")
    web.send("One more, please")
    assert web.wait_reply()["state"] == "done"
    newest_in_view(web)
    on_screen(web, "#send", SMALL_PHONE)
    shot(web, tmp_path, "phone-3-replied")

    page.set_viewport_size({"width": 375, "height": 380})  # the on-screen keyboard is up
    page.focus("#message-input")
    for selector in ("#message-input", "#send"):
        on_screen(web, selector, {"width": 375, "height": 380})
    assert page.evaluate(PAGE_SCROLLS)["moved"] == 0
    newest_in_view(web)  # the list kept its end in view as it shrank
    shot(web, tmp_path, "phone-4-keyboard-up")


def test_a_desktop_uses_its_width(browse: Browse, server_url: str, tmp_path: Path) -> None:
    web = browse(viewport=WIDE)
    page = web.page
    seed(web, server_url, [long_conversation(), conversation("short", "Short", "bravo", [
        {"role": "user", "content": "Hi"}])])
    web.wait_personas()
    page.wait_for_selector(REPLIES)
    scrolls = page.evaluate(PAGE_SCROLLS)
    assert scrolls["moved"] == 0 and scrolls["width"] <= WIDE["width"], scrolls
    sidebar, main = box(web, ".sidebar"), box(web, ".chat")
    assert sidebar["x"] < 30 and sidebar["width"] <= 350, sidebar
    assert main["x"] >= sidebar["x"] + sidebar["width"] and main["width"] >= 1030, main
    assert main["height"] >= 800
    cards = page.locator(".persona-card")
    assert cards.count() >= 4
    for index in range(cards.count()):  # every persona in sight, none cut off
        card = cards.nth(index).bounding_box()
        assert card and card["y"] + card["height"] <= WIDE["height"], index
    for panel in ("#settings-panel", "#admin-panel"):  # collapsed: a line in the sidebar each
        where = box(web, panel)
        assert where["height"] <= 56 and where["x"] + where["width"] <= sidebar["x"] + sidebar["width"]
    assert box(web, f"{REPLIES} >> nth=-1")["width"] >= 750  # long replies use the width
    assert page.evaluate(SCROLLERS) == ["messages"]
    shot(web, tmp_path, "desktop-1-wide")

    dark = browse(viewport=WIDE, color_scheme="dark")
    seed(dark, server_url, [long_conversation(3)])
    dark.wait_personas()
    dark.page.click("#settings-panel > summary")
    shot(dark, tmp_path, "desktop-2-dark")

    tablet = browse(viewport={"width": 900, "height": 700})
    seed(tablet, server_url, [long_conversation(3)])
    tablet.wait_personas()
    assert tablet.page.evaluate(PAGE_SCROLLS)["moved"] == 0
    on_screen(tablet, "#send", {"width": 900, "height": 700})
    shot(tablet, tmp_path, "tablet-1")
