"""Card files at `POST /v1/personas/import`: SillyTavern PNG cards (`chara`, `ccv3`, zTXt), JSON
card files and V1 cards become personas; a PNG without a card, a damaged one, one that is not
base64 JSON, and an oversized file are refused with a 400 naming `card_file`."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import httpx
import pytest

from server.registry import cards
from server.registry.png_card import CardFileError, card_from_png
from tests.registry.test_cards import CARD

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png(*middle: bytes) -> bytes:
    """A 1x1 PNG with `middle` chunks between its header and its pixels."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff"))
    return SIGNATURE + header + b"".join(middle) + pixels + chunk(b"IEND", b"")


def text(key: str, card: Any) -> bytes:
    return chunk(b"tEXt", key.encode() + b"\x00" + base64.b64encode(json.dumps(card).encode()))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _import(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/personas/import", json=body, timeout=60)


def test_png_cards_become_personas(served: tuple[Any, str]) -> None:
    cameo, url = served
    created = _import(url, card_file=b64(png(text("chara", CARD))), name="ada-png")
    assert created.status_code == 201, created.text
    assert created.json()["display_name"] == "Lady Ada"
    assert created.json()["greeting"] == "Good evening, User."

    v3 = {"spec": "chara_card_v3", "spec_version": "3.0",
          "data": {**CARD["data"], "name": "Ada Three", "assets": []}}
    assert _import(url, card_file=b64(png(text("ccv3", v3)))).json()["id"] == "ada-three"

    both = png(text("ccv3", v3), text("chara", {**CARD, "data": {**CARD["data"], "name": "Two"}}))
    assert _import(url, card_file=b64(both)).json()["display_name"] == "Two"  # chara wins

    compressed = b"chara\x00\x00" + zlib.compress(base64.b64encode(json.dumps(
        {**CARD, "data": {**CARD["data"], "name": "Zed"}}).encode()))
    assert _import(url, card_file=b64(png(chunk(b"zTXt", compressed)))).json()["id"] == "zed"

    as_json = json.dumps({**CARD, "data": {**CARD["data"], "name": "Jay"}}).encode()
    assert _import(url, card_file=b64(b"\xef\xbb\xbf" + as_json)).json()["id"] == "jay"

    v1 = {"name": "Old Timer", "description": "a V1 card", "first_mes": "Howdy"}
    old = _import(url, card=v1)
    assert old.status_code == 201 and old.json()["greeting"] == "Howdy"
    assert _import(url, card_file=b64(png(text("chara", {**v1, "name": "Older"})))
                   ).json()["id"] == "older"
    assert {p.name for p in cameo.registry.all()} == {
        "ada-png", "ada-three", "two", "zed", "jay", "old-timer", "older"}


def _damaged_crc() -> bytes:
    good = text("chara", CARD)
    return png(good[:-4] + struct.pack(">I", (zlib.crc32(good[4:-4]) + 1) & 0xFFFFFFFF))


BAD_FILES: list[tuple[str, dict[str, Any], str, str]] = [
    ("a plain PNG", {"card_file": b64(png())}, "no_card", "no character card"),
    ("a bad CRC", {"card_file": b64(_damaged_crc())}, "invalid_card", "CRC does not match"),
    ("cut short", {"card_file": b64(png(text("chara", CARD))[:60])}, "invalid_card", "cut short"),
    ("not base64 JSON", {"card_file": b64(png(chunk(b"tEXt", b"chara\x00%%%not-base64")))},
     "invalid_card", "not base64 of a JSON card"),
    ("an empty chunk", {"card_file": b64(png(chunk(b"tEXt", b"chara\x00")))}, "invalid_card",
     "empty"),
    ("a bad zTXt", {"card_file": b64(png(chunk(b"zTXt", b"chara\x00\x00not zlib")))},
     "invalid_card", "does not inflate"),
    ("a card that is a list", {"card_file": b64(png(text("chara", [1, 2])))}, "invalid_card",
     "not a JSON object"),
    ("the file is not base64", {"card_file": "not base64!"}, "invalid_card", "not base64"),
    ("neither PNG nor JSON", {"card_file": b64(b"GIF89a...")}, "invalid_card",
     "neither a PNG character card nor a JSON card"),
]


def test_bad_card_files_are_refused(served: tuple[Any, str]) -> None:
    cameo, url = served
    for what, body, code, message in BAD_FILES:
        response = _import(url, **body)
        assert response.status_code == 400, (what, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error", what
        assert (error["param"], error["code"]) == ("card_file", code), (what, error)
        assert message in error["message"], (what, error["message"])
    wrong_spec = _import(url, card_file=b64(json.dumps({"hello": "world"}).encode()))
    assert wrong_spec.status_code == 400
    assert wrong_spec.json()["error"]["param"] == "card.spec"
    assert "not a Character Card V2" in wrong_spec.json()["error"]["message"]
    both = _import(url, card=CARD, card_file=b64(png(text("chara", CARD))))
    assert both.status_code == 400 and both.json()["error"]["param"] == "card_file"
    neither = _import(url, name="nobody")
    assert neither.status_code == 400 and neither.json()["error"]["param"] == "card"
    assert cameo.registry.all() == []


def test_oversized_card_files_are_refused(served: tuple[Any, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cameo, url = served
    monkeypatch.setattr(cards, "MAX_CARD_FILE_BYTES", 4096)
    big = png(text("chara", CARD), chunk(b"tEXt", b"Comment\x00" + b"x" * 8000))
    inflating = b"chara\x00\x00" + zlib.compress(b"A" * 100_000)
    for body in (b64(big), b64(png(chunk(b"zTXt", inflating)))):
        response = _import(url, card_file=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("card_file", "card_too_large"), error
    assert "at most" in _import(url, card_file=b64(big)).json()["error"]["message"]
    assert cameo.registry.all() == []


def test_png_reader_without_a_server() -> None:
    assert card_from_png(png(text("chara", CARD)), 1 << 20) == CARD
    assert card_from_png(png(text("CHARA", CARD)) + b"trailing bytes", 1 << 20) == CARD
    with pytest.raises(CardFileError, match="not a PNG"):
        card_from_png(b"GIF89a", 1 << 20)
    with pytest.raises(CardFileError, match="past the end"):
        card_from_png(SIGNATURE + struct.pack(">I", 1 << 30) + b"tEXt" + b"\x00" * 8, 1 << 20)
