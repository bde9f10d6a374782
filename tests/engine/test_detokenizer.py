"""Incremental detokenization never emits broken UTF-8; stop strings are cut, even across tokens."""

from __future__ import annotations

from typing import Any

import pytest

from server.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from server.model.loader import LoadedModel

TEXTS = ["Café 🙂 naïve 日本語 — ok", "  two  spaces,\nnew line\tand tab", "Arr! 42 + 0.5 = ?"]


class SlowTokenizer:
    """The same tokenizer seen without its Rust backend: the detokenizer's window path."""

    def __init__(self, tokenizer: Any) -> None:
        self.decode = tokenizer.decode


@pytest.mark.parametrize("path", ["stream", "window"])
def test_multibyte_characters_are_never_split(embedded: LoadedModel, path: str) -> None:
    tokenizer = embedded.tokenizer
    text = TEXTS[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer if path == "stream" else SlowTokenizer(tokenizer))
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # some tokens ended mid-character and were held back


@pytest.mark.parametrize("text", TEXTS)
def test_stream_and_window_give_the_same_pieces(embedded: LoadedModel, text: str) -> None:
    tokenizer = embedded.tokenizer
    assert getattr(tokenizer, "backend_tokenizer", None) is not None  # the stream path runs
    special = tokenizer.eos_token_id
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], special]
    stream = IncrementalDetokenizer(tokenizer)
    window = IncrementalDetokenizer(SlowTokenizer(tokenizer))
    pieces = [stream.push(i) for i in ids]
    assert pieces == [window.push(i) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text


def test_stop_string_split_over_pieces() -> None:
    matcher = StopMatcher(["END"])
    out = [matcher.feed(p) for p in ["Hello E", "N", "D and more"]]
    assert "".join(out) == "Hello "
    assert matcher.stopped
    assert matcher.feed("x") == ""


def test_withheld_tail_is_released_when_no_stop_follows() -> None:
    matcher = StopMatcher(["STOP"])
    emitted = matcher.feed("abc ST")
    assert emitted == "abc"  # " ST" could start "STOP"
    assert emitted + matcher.flush() == "abc ST"
    assert not matcher.stopped


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("abc") == "abc"
