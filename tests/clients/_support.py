"""Helpers shared by the client tests (no fixtures here)."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

# Short replies keep the suite quick on a 2-core CPU.
MAX_TOKENS = 8


def card_v2(name: str = "Mira", **data: Any) -> dict[str, Any]:
    """A SillyTavern Character Card V2 object."""
    fields = {
        "name": name,
        "description": f"{name} is a cheerful lighthouse keeper.",
        "personality": "warm, curious",
        "scenario": "A stormy night at the lighthouse.",
        "first_mes": f"Welcome to the lighthouse! I am {name}.",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hello, traveller!",
        "system_prompt": f"You are {name}, a lighthouse keeper.",
        "post_history_instructions": "Stay in character.",
        "tags": ["test", "lighthouse"],
        "creator_notes": "",
        "alternate_greetings": [],
        "creator": "tests",
        "character_version": "1.0",
        "extensions": {},
    }
    fields.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": fields}


def png_card(path: Path, card: dict[str, Any]) -> Path:
    """A 1x1 PNG carrying `card` as SillyTavern does: base64 JSON in a tEXt chunk 'chara'."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\xff\xff")
    text = b"chara\x00" + base64.b64encode(json.dumps(card).encode())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", text)
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path
