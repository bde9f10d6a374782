"""Token ids to text, incrementally, without ever emitting half a UTF-8 character or a stop string.

`IncrementalDetokenizer.push(token)` returns the text that token completed, decoding once per
token: with a fast (Rust) tokenizer through `tokenizers`' own `DecodeStream`, which keeps the
window of recent ids and holds back a byte-level BPE token that ends in the middle of a
multi-byte character; with any other tokenizer through the same window kept here (two `decode`
calls of a few ids per token). Both give the text of decoding all the ids at once, piece by piece.
`StopMatcher` holds back the last few characters that could be the start of a stop string, and
cuts the text at the first complete one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decodes a growing id sequence; `push` returns only newly completed text."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._stream = _decode_stream(tokenizer)
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # ids before this have been turned into text

    def push(self, token_id: int) -> str:
        if self._stream is not None:
            stream, backend = self._stream
            return stream.step(backend, token_id) or ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        full_text = self._decode(self._ids[self._prefix:])
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""  # an incomplete character: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text):]

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


def _decode_stream(tokenizer: Any) -> tuple[Any, Any] | None:
    """(DecodeStream, the Rust tokenizer) for a fast tokenizer, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers.decoders import DecodeStream

    return DecodeStream(skip_special_tokens=True), backend


class StopMatcher:
    """Feeds text through, withholding what may become a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string completes."""
        if self.stopped:
            return ""
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        safe = max(len(self._pending) - self._hold, 0)
        out, self._pending = self._pending[:safe], self._pending[safe:]
        return out

    def flush(self) -> str:
        """At the end of generation, the withheld tail is no stop string: release it."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
