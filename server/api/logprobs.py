"""Engine `TokenLogprob`s into OpenAI's two logprob shapes, with each token's text and bytes.

- Chat: `logprobs.content[]` of `{token, logprob, bytes, top_logprobs: [{token, logprob,
  bytes}]}` (`chat_entries`).
- Legacy completions: `{tokens, token_logprobs, top_logprobs, text_offset}` (`legacy`), where
  an echoed prompt's first token has null entries (nothing predicts it) and each
  `top_logprobs` dict also holds the chosen token, as OpenAI's and vLLM's do.

`TokenTexts` gives a token's exact bytes: for byte-level BPE tokenizers (GPT-2, Llama 3,
SmolLM) through the byte alphabet, for SentencePiece ones through `▁` and `<0xNN>`; else the
UTF-8 of the token decoded alone. A token that ends inside a multi-byte character has its
partial bytes in `bytes` and U+FFFD in `token`. Special tokens (end of turn) are left out of
the chat entries: they are not part of the reply's text.

It does not compute logprobs: the engine does (`SamplingParams.logprobs`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from server.api.completion_schemas import CompletionLogprobs
from server.api.schemas import TokenLogprobInfo, TopLogprob
from server.engine.types import TokenLogprob


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, reversed."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


class TokenTexts:
    """Token id -> its text and UTF-8 bytes, for one tokenizer (cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._kind = _decoder_kind(tokenizer)
        self._alphabet = _byte_alphabet()
        self._special = frozenset(getattr(tokenizer, "all_special_ids", ()) or ())
        self._cache: dict[int, tuple[str, bytes]] = {}

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def text(self, token_id: int) -> str:
        return self._entry(token_id)[0]

    def utf8(self, token_id: int) -> bytes:
        return self._entry(token_id)[1]

    def _entry(self, token_id: int) -> tuple[str, bytes]:
        found = self._cache.get(token_id)
        if found is None:
            raw = self._raw(token_id)
            found = self._cache[token_id] = (raw.decode("utf-8", "replace"), raw)
        return found

    def _raw(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if token_id in self._special or not isinstance(piece, str):
            return str(self._tokenizer.decode([token_id])).encode()
        if self._kind == "byte_level" and all(c in self._alphabet for c in piece):
            return bytes(self._alphabet[c] for c in piece)
        if self._kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("▁", " ").encode()
        return str(self._tokenizer.decode([token_id])).encode()


def _decoder_kind(tokenizer: Any) -> str:
    """`byte_level`, `sentencepiece` or `other`, from the fast tokenizer's decoder."""
    try:
        decoder = json.dumps(json.loads(tokenizer.backend_tokenizer.decoder.__getstate__()))
    except Exception:  # a slow tokenizer, or none of the known decoders
        return "other"
    if '"ByteLevel"' in decoder:
        return "byte_level"
    return "sentencepiece" if "ByteFallback" in decoder or "▁" in decoder else "other"


@functools.lru_cache(maxsize=8)
def token_texts(tokenizer: Any) -> TokenTexts:
    return TokenTexts(tokenizer)


def _top(texts: TokenTexts, token_id: int, logprob: float) -> TopLogprob:
    return TopLogprob(token=texts.text(token_id), logprob=logprob,
                      bytes=list(texts.utf8(token_id)))


def chat_entries(texts: TokenTexts, entries: Sequence[TokenLogprob]) -> list[TokenLogprobInfo]:
    """OpenAI chat `logprobs.content` items for generated tokens (special tokens left out)."""
    return [TokenLogprobInfo(token=texts.text(e.token_id), logprob=e.logprob,
                             bytes=list(texts.utf8(e.token_id)),
                             top_logprobs=[_top(texts, t, lp) for t, lp in e.top])
            for e in entries if not texts.is_special(e.token_id)]


def legacy(texts: TokenTexts, token_ids: Sequence[int], entries: Sequence[TokenLogprob | None],
           offset: int, *, generated: bool) -> CompletionLogprobs:
    """The legacy shape for `token_ids` (each with its entry, None for an unscored one), their
    `text_offset`s counted from `offset` characters into the returned text. Generated special
    tokens are left out (the text has none); an echoed prompt keeps every token, so that
    position i is the prompt's token i."""
    result = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for token_id, entry in zip(token_ids, entries, strict=True):
        if generated and texts.is_special(token_id):
            continue
        text = texts.text(token_id)
        result.tokens.append(text)
        result.text_offset.append(offset)
        offset += len(text)
        if entry is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        result.token_logprobs.append(entry.logprob)
        top = {texts.text(t): lp for t, lp in entry.top}
        top.setdefault(text, entry.logprob)
        result.top_logprobs.append(top)
    return result


def merge_legacy(parts: Sequence[CompletionLogprobs]) -> CompletionLogprobs:
    """Consecutive pieces of one choice's legacy logprobs, as one."""
    merged = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for part in parts:
        merged.tokens += part.tokens
        merged.token_logprobs += part.token_logprobs
        merged.top_logprobs += part.top_logprobs
        merged.text_offset += part.text_offset
    return merged
