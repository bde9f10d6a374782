"""Incremental detokenization never emits broken UTF-8; stop strings are cut, even across tokens."""

from __future__ import annotations

from server.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from server.model.loader import LoadedModel


def test_multibyte_characters_are_never_split(embedded: LoadedModel) -> None:
    tokenizer = embedded.tokenizer
    text = "Café 🙂 naïve 日本語 — ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # some tokens ended mid-character and were held back


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
