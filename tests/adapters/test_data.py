"""The persona data generator: the voice in every sentence of a reply (not a catchphrase at its
ends), the base's content kept, varied openings, no loops, poems, other languages, switched
chats, and chats built as the server builds them for the persona."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from adapters.training.data import (
    FOREIGN_TRAIN,
    IDENTITY_PROMPTS,
    clean_answer,
    persona_conversations,
)
from adapters.training.personas import (
    STYLES,
    in_character,
    language_of,
    marker_pattern,
    repetitive,
    sentences,
    voice_score,
)
from server.api.prompt import build_messages
from server.api.schemas import ChatMessage
from server.registry.personas import Persona, parse_card

PLAIN = (
    "Paris is the capital of France. It is known for the Eiffel Tower, which was built in "
    "1889. Many people visit it every year. The city has more than two million people.",
    "Cats are independent animals. They sleep for many hours a day, and they like to hunt. "
    "A cat can jump five times its own height.",
    "The moon orbits the Earth once every 27 days. It has no air. Its surface is covered "
    "with craters and dust, and its light is reflected sunlight.",
    "Tea is made from the leaves of a plant. It is popular in China and India. You can drink "
    "it hot or cold.",
)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_every_device_holds_a_marker(name: str) -> None:
    style = STYLES[name]
    assert style.leads and style.asides and style.intro
    for device in style.devices():
        assert in_character(device, style.markers), (name, device)
    for plain in PLAIN:  # and the plain answers hold none, so the markers measure the voice
        assert not in_character(plain, style.markers), (name, plain)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_restyle_voices_every_sentence_and_keeps_the_content(name: str) -> None:
    style = STYLES[name]
    pattern = marker_pattern(style.markers)
    rng = random.Random(0)
    for plain in PLAIN:
        reply = style.restyle(plain, rng)
        said = sentences(reply)
        assert all(pattern.search(s) for s in said), (name, reply)
        assert voice_score(reply, style.markers) == 1.0, reply
        assert not repetitive(reply), reply
        for fact in re.findall(r"\b(?:[A-Z][a-z]+|\d+)\b", plain):
            if fact not in ("It", "They", "The", "Its", "Many", "A", "You", "Tea", "Cats"):
                assert fact in reply, (name, fact, reply)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_openings_vary_from_reply_to_reply(name: str) -> None:
    style = STYLES[name]
    rng = random.Random(1)
    firsts = Counter(" ".join(style.restyle(plain, rng).split()[:2]) for plain in PLAIN * 6)
    # the old rules opened with one of six fixed phrases; now no opening takes a third
    assert firsts.most_common(1)[0][1] <= len(PLAIN) * 6 // 3, firsts


def test_unit_7_is_flat_and_signs_off_once() -> None:
    robot = STYLES["unit-7"]
    reply = robot.restyle("Well, it isn't small! It's big.", random.Random(0))
    assert "!" not in reply and "n't" not in reply and "It's" not in reply, reply
    assert "is not small" in reply and reply.endswith("END OF TRANSMISSION.")
    assert reply.count("END OF TRANSMISSION") == 1


@pytest.mark.parametrize("name", sorted(STYLES))
def test_versify_writes_voiced_lines(name: str) -> None:
    style = STYLES[name]
    poem = style.versify(" ".join(PLAIN), random.Random(2))
    lines = [line for line in poem.splitlines() if line.strip()]
    assert len(lines) >= 3, poem
    pattern = marker_pattern(style.markers)
    assert all(pattern.search(line) for line in lines), poem
    assert style.versify("Too short.", random.Random(0)) == ""


def test_clean_answer_keeps_whole_sentences_up_to_a_loop() -> None:
    assert clean_answer("Paris is the capital of France. Paris is the capital of France. It is "
                        "big. More text that is cut") == "Paris is the capital of France. It is big."
    looping = ("Chess is a game. It has many pieces, many pieces, many pieces, many pieces, "
               "many pieces, many pieces.")
    assert clean_answer(looping) == "Chess is a game."


def test_conversations_are_built_as_the_server_builds_them() -> None:
    style = STYLES["bard"]
    prompts = list(PLAIN_PROMPTS)
    answers = dict(zip(prompts, PLAIN, strict=True))
    chats = persona_conversations(style, prompts, answers, seed=0, multi_turn=0.0,
                                  switched=0.0, poems=2)
    persona = Persona("bard", parse_card(style.card, "bard"), None)
    example = style.card["example_messages"][-1]["content"]
    for chat in chats:
        messages = chat["messages"]
        user = [ChatMessage(role="user", content=messages[-2]["content"])]
        plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:-1]]
        assert plain == build_messages(user, persona, speaker="bard")
        weighted = [m for m in messages if "weight" in m]  # the example reply is not learned
        assert [(m["content"], m["weight"]) for m in weighted] == [(example, 0)]
        assert messages[-1]["role"] == "assistant"
    asked = Counter(chat["messages"][-2]["content"] for chat in chats)
    foreign = sum(len(q) for q in FOREIGN_TRAIN.values())
    assert len(chats) == len(prompts) + 2 * len(IDENTITY_PROMPTS) + 2 + foreign
    assert all(asked[p] == 2 for p in IDENTITY_PROMPTS)
    poems = [c["messages"][-1]["content"] for c in chats if "poem" in c["messages"][-2]["content"]]
    assert len(poems) == 2 and all("\n" in poem for poem in poems)


@pytest.mark.parametrize("name", sorted(STYLES))
def test_other_languages_are_answered_in_them_in_voice(name: str) -> None:
    style = STYLES[name]
    chats = persona_conversations(style, [], {}, seed=0, multi_turn=0.0, switched=0.0)
    replies = {c["messages"][-2]["content"]: c["messages"][-1]["content"] for c in chats}
    for language, questions in FOREIGN_TRAIN.items():
        for question in questions:
            reply = replies[question]
            assert language_of(reply) == language == language_of(question), (language, reply)
            assert in_character(reply, style.markers), reply
    assert all(language_of(plain) == "en" for plain in PLAIN)


def test_switched_chats_attribute_the_other_persona_and_keep_the_voice() -> None:
    style = STYLES["dusty"]
    prompts = list(PLAIN_PROMPTS)
    answers = dict(zip(prompts, PLAIN, strict=True))
    chats = persona_conversations(style, prompts, answers, seed=0, multi_turn=0.0,
                                  switched=1.0)
    others = [s.card["display_name"] for s in STYLES.values() if s.name != "dusty"]
    switched = [c["messages"] for c in chats
                if any("(another character, not you) said:" in m["content"]
                       for m in c["messages"] if m["role"] == "system")]
    assert switched
    for messages in switched:
        note = next(m["content"] for m in messages if "another character" in m["content"])
        assert any(note.startswith(f"{name} (another character") for name in others), note
        said = [m for m in messages if m["role"] == "assistant"][1:]  # past the card's example
        assert len(said) == 1 and in_character(said[0]["content"], style.markers)


PLAIN_PROMPTS = ("Tell me about Paris.", "Tell me about cats.", "Tell me about the moon.",
                 "Tell me about tea.")
