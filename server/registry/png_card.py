"""Character cards inside PNG images, as SillyTavern saves them: the card's JSON, in base64, in a
text chunk named `chara` (a V2 card, or a V1 card from older tools) or `ccv3` (a V3 card).

Contract: `card_from_png(raw)` returns the card's JSON object from a PNG file's bytes, not yet
validated (`cards.py` does that), or raises `CardFileError` (param `card_file`) for a file that
is not a PNG, a chunk cut short or failing its CRC, a PNG with no card chunk, a card chunk that
is not base64 JSON, or a compressed chunk that inflates past `limit`. `chara` wins when both
chunks are there (SillyTavern writes both). A V3 card (only `ccv3`) is read as V2: V3 keeps
every V2 field in `data`, and the fields only V3 has (assets, group greetings) are left out.

It reads `tEXt` and `zTXt` chunks only (card tools write no `iTXt`), never decodes the image,
and stops at `IEND`; what follows it is ignored.

`image_only(raw)` is the same PNG without its text chunks (`tEXt`, `zTXt`, `iTXt`: the card and
any other metadata), for use as the persona's avatar; it raises `CardFileError` as above.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from server.registry.personas import CardError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYS = ("chara", "ccv3")  # in order of preference
_TEXT_KINDS = (b"tEXt", b"zTXt")
_METADATA_KINDS = (b"tEXt", b"zTXt", b"iTXt")


class CardFileError(CardError):
    """A card file that cannot be read (`param` card_file); `code` says how."""

    def __init__(self, message: str, code: str = "invalid_card") -> None:
        super().__init__(message, "card_file", code)


def card_from_png(raw: bytes, limit: int) -> dict[str, Any]:
    if not raw.startswith(SIGNATURE):
        raise CardFileError("card_file is not a PNG image (no PNG signature)")
    texts: dict[str, bytes] = {}
    for offset, kind, body in _chunks(raw):
        if kind in _TEXT_KINDS:
            key, text = _text(offset, kind, body, limit)
            if key in CARD_KEYS and key not in texts:
                texts[key] = text
    found = next((k for k in CARD_KEYS if k in texts), None)
    if found is None:
        raise CardFileError("the PNG holds no character card (no 'chara' or 'ccv3' text chunk)",
                            code="no_card")
    card = _decode(found, texts[found])
    if found == "ccv3" and card.get("spec") == "chara_card_v3":
        card = {**card, "spec": "chara_card_v2", "spec_version": "2.0"}
    return card


def image_only(raw: bytes) -> bytes:
    """The PNG `raw` with its text chunks left out: the picture alone, chunks as they were."""
    kept = [raw[offset:offset + 12 + len(body)] for offset, kind, body in _chunks(raw)
            if kind not in _METADATA_KINDS]
    return SIGNATURE + b"".join(kept)


def _chunks(raw: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, type, data) of each chunk, its CRC checked, up to and including IEND."""
    offset = len(SIGNATURE)
    while offset < len(raw):
        if offset + 12 > len(raw):
            raise CardFileError(f"the PNG is cut short: {len(raw) - offset} stray bytes at byte "
                                f"{offset}, where a chunk needs at least 12")
        length, kind = struct.unpack(">I4s", raw[offset:offset + 8])
        end = offset + 12 + length
        if end > len(raw):
            raise CardFileError(f"the PNG is cut short: its {_name(kind)} chunk at byte {offset} "
                                f"declares {length} bytes, past the end of the file")
        body = raw[offset + 8:end - 4]
        (crc,) = struct.unpack(">I", raw[end - 4:end])
        if zlib.crc32(kind + body) != crc:
            raise CardFileError(f"the PNG's {_name(kind)} chunk at byte {offset} is damaged (its "
                                "CRC does not match)")
        yield offset, kind, body
        if kind == b"IEND":
            return
        offset = end


def _text(offset: int, kind: bytes, body: bytes, limit: int) -> tuple[str, bytes]:
    """(lower-case keyword, text) of a tEXt or zTXt chunk; ("", b"") for one without a key."""
    key, sep, value = body.partition(b"\x00")
    if not sep:
        return "", b""
    name = key.decode("latin-1").lower()
    if kind == b"tEXt" or name not in CARD_KEYS:
        return name, value
    inflater = zlib.decompressobj()
    try:  # value: one compression-method byte (0, deflate), then the zlib stream
        text = inflater.decompress(value[1:], limit + 1)
    except zlib.error as exc:
        raise CardFileError(f"the PNG's zTXt chunk '{name}' at byte {offset} does not inflate: "
                            f"{exc}") from exc
    if len(text) > limit or inflater.unconsumed_tail:
        raise CardFileError(f"the PNG's zTXt chunk '{name}' inflates past {limit} bytes",
                            code="card_too_large")
    return name, text


def _decode(key: str, text: bytes) -> dict[str, Any]:
    if not text.strip():
        raise CardFileError(f"the PNG's '{key}' text chunk is empty")
    try:
        card = json.loads(base64.b64decode(text).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CardFileError(f"the PNG's '{key}' text chunk is not base64 of a JSON card: "
                            f"{exc}") from exc
    if not isinstance(card, dict):
        raise CardFileError(f"the PNG's '{key}' card is not a JSON object")
    return card


def _name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))
