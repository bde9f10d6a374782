"""`clients.wire` without a server: request bodies, the stream decoder and error parsing, which
both Python clients share."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from clients import wire
from clients.types import CameoError, Message


def test_chat_body_drops_unset_parameters() -> None:
    body = wire.chat_body("alpha", [Message("user", "Hi")], stream=True, system="Be brief.",
                          include_usage=True, max_tokens=8, temperature=None)
    assert body == {"model": "alpha", "stream": True, "max_tokens": 8,
                    "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi"}],
                    "stream_options": {"include_usage": True}}
    with pytest.raises(ValueError, match="at least one message"):
        wire.chat_body("alpha", [], stream=False)


def test_stream_decoder() -> None:
    stream = wire.ChatStream(200)
    event = {"id": "c1", "model": "alpha", "choices": [{"delta": {"content": "He"}}]}
    lines = [": ping", f"data: {json.dumps(event)}", "", "data: [DONE]", "", "data: late"]
    chunks = []
    for line in lines:
        chunk = stream.feed(line)
        if stream.done:
            break
        if chunk is not None:
            chunks.append(chunk)
    assert [c.text for c in chunks] == ["He"] and stream.done and stream.close() is None
    tail = wire.ChatStream(200)
    assert tail.feed(f"data: {json.dumps(event)}") is None
    assert tail.close() is not None  # an event the stream ended without a blank line after
    errored = wire.ChatStream(200)
    assert errored.feed('data: {"error": {"message": "boom", "code": "x"}}') is None
    with pytest.raises(CameoError) as failed:
        errored.feed("")  # the blank line ends the event, which carries an error
    assert (failed.value.message, failed.value.code) == ("boom", "x")
    broken = wire.ChatStream(200)
    broken.feed("data: {not json")
    with pytest.raises(CameoError, match="unreadable event"):
        broken.close()


def test_answers_and_errors() -> None:
    assert wire.answer(200, b'{"ok": true}', "OK") == {"ok": True}
    assert wire.answer(204, b"", "No Content") is None
    with pytest.raises(CameoError) as caught:
        wire.answer(409, b'{"error": {"message": "taken", "code": "exists", "param": "name"}}',
                    "Conflict")
    assert (caught.value.status, caught.value.code, caught.value.param) == (409, "exists", "name")
    assert str(wire.error_from(502, b"<html>bad gateway</html>", "Bad Gateway")) == \
        "<html>bad gateway</html> (HTTP 502)"
    assert wire.error_from(500, b"", "Internal Server Error").message == "Internal Server Error"


def test_import_body_sends_the_file_unread(tmp_path: Path) -> None:
    card = tmp_path / "card.png"
    card.write_bytes(b"\x89PNG whatever")
    body = wire.import_body(card, "mira", None, False)
    assert body == {"replace": False, "name": "mira",
                    "card_file": base64.b64encode(b"\x89PNG whatever").decode()}
    assert wire.import_body({"spec": "x"}, None, "pirate", True) == {
        "replace": True, "card": {"spec": "x"}, "adapter": "pirate"}
    with pytest.raises(ValueError, match="must match"):
        wire.import_body(card, "Not OK", None, False)


def test_upload_body_is_a_sized_multipart(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00" * 1000)
    body = wire.upload_body(tmp_path, "pirate", replace=True, force=False)
    seen: list[int] = []
    data = b"".join(body.chunks(lambda sent, total: seen.append(sent)))
    assert len(data) == body.total == int(body.headers["Content-Length"]) == seen[-1]
    assert b'name="replace"\r\n\r\ntrue' in data and b'filename="adapter_model.safetensors"' in data
    assert body.boundary in body.headers["Content-Type"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no adapter_config\.json"):
        wire.upload_body(tmp_path / "empty", None, False, False)
