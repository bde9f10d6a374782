"""The persona fidelity measures on hand-made replies (no model): the middle of a reply, the voice
score on it, loops and empty replies as failures, the catchphrase wrapper scoring nothing in the
middle, the paired comparison with its sign test, and the distinctness classifier separating two
clearly different synthetic personas while staying at chance for two drawn alike."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from adapters.training.personas import (
    failed,
    in_voice,
    middle,
    repetitive,
    sentences,
    voice_score,
)
from benchmarks.persona_eval import (
    CONDITIONS,
    EvalPersona,
    card_params,
    catchphrase,
    distinctness,
    language_match,
    load_personas,
    middle_text,
    paired,
    plan,
    print_table,
    reply_budget,
    score_all,
    score_condition,
    score_persona,
    sign_test,
    word_vector,
    wrap,
)
from server.registry.personas import parse_card

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "adapters" / "registry"
PIRATE = ["arr", "matey", "ye", "yer", "ahoy", "aye"]
PLAIN = ("Kites fly when the wind lifts them. A light frame and a thin sail help. "
         "Start on an open field with a steady breeze. Keep the line tight and let it out slowly.")
VOICED = ("Arr, matey! Kites be flyin' when the wind lifts 'em, ye see. A light frame and a thin "
          "sail help yer kite. Start on an open field, matey, with a steady breeze. Fair winds!")


def test_sentences_split_on_end_marks_and_line_breaks() -> None:
    assert sentences("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]
    assert sentences('He said "stop." Then\nhe left...  ') == ['He said "stop.', "Then",
                                                               "he left..."]
    assert sentences("Pi is 3.14 exactly. Yes.") == ["Pi is 3.14 exactly.", "Yes."]
    assert sentences("  ") == [] and sentences("... !!") == []


def test_middle_drops_first_and_last_sentence() -> None:
    assert middle("A one. B two. C three. D four.") == ["B two.", "C three."]
    assert middle("Arr, matey! The sea is wide. Savvy?") == ["The sea is wide."]
    assert middle("Arr, matey! Savvy?") == []  # two sentences: no middle
    assert middle("Arr, matey!") == [] and middle("") == []


def test_voice_is_the_share_of_middle_sentences_with_a_marker() -> None:
    assert voice_score(VOICED, PIRATE) == pytest.approx(1.0)  # all three middle sentences
    half = "Arr! Ye sail far. The wind is strong. Savvy?"
    assert voice_score(half, PIRATE) == pytest.approx(0.5)
    assert voice_score(PLAIN, PIRATE) == 0.0
    # markers in the first and last sentence only: nothing in the middle
    assert voice_score("Arr, matey! Kites fly high. They need wind. Savvy, matey?", PIRATE) == 0.0
    assert voice_score("Arr, matey, ye be right! Aye, matey.", PIRATE) == 0.0  # no middle


def test_wrapper_that_only_prepends_a_catchphrase_scores_no_voice() -> None:
    wrapped = wrap("Ahoy, matey!", PLAIN)
    assert wrapped.startswith("Ahoy, matey! Kites fly")
    assert in_voice(wrapped, PIRATE)  # the old any-marker measure is fooled
    assert voice_score(wrapped, PIRATE) == 0.0
    assert score_condition([wrapped] * 3, PIRATE).voice == 0.0
    assert score_condition([VOICED] * 3, PIRATE).voice == pytest.approx(1.0)


def test_looping_replies_fail_and_score_nothing() -> None:
    loop = "Arr! " * 12
    assert repetitive(loop) and failed(loop)
    said_twice = ("Arr, matey! The sea be wide, matey. Ye sail it with care. "
                  "The sea be wide, matey. Ye sail it with care. Savvy?")
    assert repetitive(said_twice) and voice_score(said_twice, PIRATE) == 0.0
    runs = ("Ahoy! Ye sail on the open sea today, then ye sail on the open sea again, and "
            "ye sail on the open sea once more. Arr!")
    assert repetitive(runs) and voice_score(runs, PIRATE) == 0.0
    assert not in_voice(loop, PIRATE)
    for fine in (PLAIN, VOICED, "Arr, matey! Arr, matey! Ye be welcome. Savvy?"):
        assert not repetitive(fine), fine


def test_empty_replies_fail() -> None:
    for empty in ("", "   ", "\n"):
        assert failed(empty) and voice_score(empty, PIRATE) == 0.0
        assert not in_voice(empty, PIRATE)
    score = score_condition(["", VOICED, "Arr! " * 12, "Arr, matey! Savvy?"], PIRATE)
    assert score.failed == pytest.approx(0.5)
    assert score.no_middle == pytest.approx(0.25)
    assert score.voice == pytest.approx(0.25)
    assert score.per_reply == (0.0, 1.0, 0.0, 0.0)
    assert middle_text("") == "" and middle_text("Arr! " * 12) == ""
    assert middle_text(VOICED).startswith("Kites be flyin'") and "Fair winds" not in middle_text(VOICED)


def test_sign_test_and_paired_comparison() -> None:
    assert sign_test(8, 0) == pytest.approx(2 / 256)
    assert sign_test(0, 8) == pytest.approx(2 / 256)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(5, 1) == pytest.approx(2 * 7 / 64)
    better = paired([1.0] * 8 + [0.0], [0.0] * 9)
    assert better == {"wins": 8, "losses": 0, "ties": 1, "p": round(2 / 256, 6), "beats": True}
    assert not paired([1.0] * 3, [0.0] * 3)["beats"]  # higher, but 3 prompts prove nothing
    assert not paired([0.5] * 9, [0.5] * 9)["beats"]
    assert not paired([0.0] * 9, [1.0] * 9)["beats"]


def test_catchphrase_is_the_greetings_first_sentence() -> None:
    personas = load_personas(REGISTRY, None)
    assert {p.name for p in personas} >= {"bard", "captain-bones", "dusty", "unit-7"}
    for persona in personas:
        phrase = persona.catchphrase
        assert persona.card.greeting.startswith(phrase), persona.name
        assert in_voice(phrase + " " + PLAIN, persona.markers)  # the catchphrase has a marker
        assert voice_score(wrap(phrase, PLAIN), persona.markers) == 0.0
    bones = next(p for p in personas if p.name == "captain-bones")
    assert bones.catchphrase == "Ahoy, matey!"
    no_greeting = parse_card({"display_name": "X", "example_messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo! Hello."}]}, "x")
    assert catchphrase(no_greeting) == "Yo!"
    assert catchphrase(parse_card({"display_name": "X"}, "x")) == ""


TOPIC = [f"topic{i}" for i in range(30)]  # words every persona's replies share


def _replies(rng: random.Random, voice: list[str], count: int) -> list[str]:
    """Synthetic middles: four topic words and two of the persona's own words, shuffled."""
    replies = []
    for _ in range(count):
        said = rng.choices(TOPIC, k=4) + rng.choices(voice, k=2)
        rng.shuffle(said)
        replies.append(" ".join(said))
    return replies


def test_distinctness_separates_clearly_different_personas() -> None:
    rng = random.Random(0)
    pirate = _replies(rng, ["arr", "matey", "ye", "yer", "ahoy"], 40)
    bard = _replies(rng, ["thee", "thou", "doth", "hath", "forsooth"], 40)
    result = distinctness({"pirate": pirate, "bard": bard})
    assert result["chance"] == 0.5
    assert result["overall"] >= 0.95, result
    assert min(result["per_persona"].values()) >= 0.9, result


def test_distinctness_is_at_chance_for_personas_drawn_alike() -> None:
    rng = random.Random(1)
    texts = {name: _replies(rng, ["arr", "matey", "ye"], 60) for name in ("a", "b", "c")}
    result = distinctness(texts)
    assert result["chance"] == pytest.approx(1 / 3, abs=1e-4)
    assert abs(result["overall"] - 1 / 3) < 0.12, result  # leave-one-out: no self-match


def test_identical_replies_are_not_attributed_and_empty_middles_never_are() -> None:
    replies = ["arr matey ye sail", "thee thou doth hath"] * 5
    result = distinctness({"a": replies, "b": list(replies)})
    assert result["overall"] == 0.0  # each reply's twin sits in the other persona's centroid
    assert distinctness({"a": ["", ""], "b": ["x y", "x z"]})["per_persona"]["a"] == 0.0
    tie = distinctness({"a": ["x", "x"], "b": ["x"]})  # as close to both centroids: no hit
    assert tie["per_persona"] == {"a": 0.0, "b": 0.0}


def test_word_vectors_have_unit_length() -> None:
    vector = word_vector("Arr arr matey")
    assert vector == pytest.approx({"arr": 2 / 5**0.5, "matey": 1 / 5**0.5})
    assert word_vector("") == {}


def test_score_persona_reports_whether_the_adapter_beats_the_wrapper() -> None:
    card = json.loads((REGISTRY / "captain-bones" / "persona.json").read_text())
    persona = EvalPersona("captain-bones", REGISTRY / "captain-bones",
                          parse_card(card, "captain-bones"))
    wrapper = [wrap(persona.catchphrase, PLAIN)] * 10
    facts = {"adapter": [True, False], "base": [True, True]}
    good = score_persona(persona, {"adapter": [VOICED] * 10, "prompt_only": [PLAIN] * 10,
                                   "wrapper": wrapper}, facts)
    assert good["voice"] == {"adapter": 1.0, "prompt_only": 0.0, "wrapper": 0.0}
    assert good["any_marker"]["wrapper"] == 1.0  # what the old measure would have reported
    assert good["vs_wrapper"]["beats"] and good["vs_prompt_only"]["beats"]
    assert good["facts"] == {"adapter": 0.5, "base": 1.0}
    fake = score_persona(persona, {"adapter": wrapper, "prompt_only": [PLAIN] * 10,
                                   "wrapper": wrapper}, facts)
    assert fake["voice"]["adapter"] == 0.0 and not fake["vs_wrapper"]["beats"]
    assert fake["vs_wrapper"]["ties"] == 10
    assert good["language"] == {}  # no prompts given: no language measure


def test_language_counts_replies_in_the_prompts_language() -> None:
    prompts = ["Tell me about owls.", "¿Qué son los pingüinos?", "Was sind Eulen?"]
    spanish = "¡Arr, grumete! Este viejo pirata habla poco español. Pregúntame en inglés."
    german = "Arr, Matrose! Dieser alte Pirat spricht wenig Deutsch. Frag mich auf Englisch."
    assert language_match(prompts, [PLAIN, spanish, german]) == 1.0
    assert language_match(prompts, [PLAIN, PLAIN, german]) == 0.5  # English to a Spanish one
    assert language_match(prompts, [PLAIN, "", "Deutsch " * 20]) == 0.0  # empty, looping
    assert language_match(prompts[:1], [PLAIN]) is None


class _CharTokenizer:
    """Renders messages as JSON and tokenizes by character: enough to check what is asked."""

    def apply_chat_template(self, messages: list[dict[str, str]], tools: object = None,
                            tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        return json.dumps(messages)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def _messages(ids: tuple[int, ...]) -> list[dict[str, str]]:
    return json.loads("".join(chr(i) for i in ids))


def test_every_condition_runs_with_the_cards_sampling_and_the_same_seeds() -> None:
    personas = [p for p in load_personas(REGISTRY, None) if p.name in ("bard", "captain-bones")]
    prompts, questions = ["Tell me about yoga.", "Good evening!"], ["What is 2 + 2?"]
    jobs = plan(personas, prompts, questions, _CharTokenizer(),
                budget={"bard": 100, "captain-bones": 120}, fact_tokens=40, seed=7)
    bones = next(p for p in personas if p.name == "captain-bones")
    for i, prompt in enumerate(prompts):
        adapter, alone, base = (jobs[("heldout", c, "captain-bones")][i]
                                for c in ("adapter", "prompt_only", "base"))
        expected = card_params(bones.card.sampling, max_tokens=120, seed=7 + i)
        assert adapter.params == alone.params == base.params == expected
        assert (expected.temperature, expected.top_p, expected.repetition_penalty) == (
            0.7, 0.9, 1.1)
        assert adapter.adapter is not None and adapter.adapter.name == "captain-bones"
        assert alone.adapter is None and base.adapter is None
        assert alone.prompt_ids == adapter.prompt_ids  # prompt-only: the same messages
        served = _messages(adapter.prompt_ids)
        assert served[0] == {"role": "system", "content": bones.card.system_prompt}
        assert any("Example dialogue" in m["content"] for m in served)  # as the server builds
        assert served[-1] == {"role": "user", "content": prompt}
        assert _messages(base.prompt_ids) == [{"role": "user", "content": prompt}]
    fact = jobs[("facts", "adapter", "bard")][0]
    assert fact.params.max_tokens == 40 and fact.params.seed == 7
    assert ("facts", "prompt_only", "bard") not in jobs


def test_reply_budget_is_the_override_else_the_cards_else_the_servers() -> None:
    card = parse_card({"display_name": "X", "sampling": {"max_tokens": 90}}, "x")
    assert reply_budget(card, 64, 512) == 64
    assert reply_budget(card, None, 512) == 90
    assert reply_budget(parse_card({"display_name": "X"}, "x"), None, 512) == 512


def test_score_all_and_the_table_from_generated_replies(capsys: pytest.CaptureFixture[str]) -> None:
    personas = [p for p in load_personas(REGISTRY, None) if p.name in ("bard", "captain-bones")]
    bard_voice = ("Hark! Thou dost ask of kites, and thee I answer. A kite doth fly on the "
                  "wind, forsooth. Thy line must be held tight, I prithee. Fare thee well.")
    outputs = {}
    for persona, voiced in zip(personas, (bard_voice, VOICED), strict=True):
        outputs[("heldout", "adapter", persona.name)] = [voiced] * 6
        outputs[("heldout", "prompt_only", persona.name)] = [PLAIN] * 6
        outputs[("heldout", "base", persona.name)] = [PLAIN] * 6
        outputs[("facts", "adapter", persona.name)] = ["Paris, of course.", "I cannot say."]
        outputs[("facts", "base", persona.name)] = ["It is Paris.", "Tokyo."]
    facts = [{"question": "Capital of France?", "answers": ["Paris"]},
             {"question": "Capital of Japan?", "answers": ["Tokyo"]}]
    results, distinct = score_all(personas, facts, outputs)
    for name in ("bard", "captain-bones"):
        row = results[name]
        assert row["voice"]["adapter"] == 1.0 and row["voice"]["wrapper"] == 0.0
        assert row["vs_wrapper"]["beats"]  # 6 of 6 prompts: p = 1/32
        assert row["facts"] == {"adapter": 0.5, "base": 1.0}
        assert row["distinct"]["adapter"] == 1.0
    assert set(distinct) == set(CONDITIONS)
    assert distinct["adapter"]["overall"] == 1.0 and distinct["adapter"]["chance"] == 0.5
    assert distinct["wrapper"]["overall"] == 0.0  # the same base text for both: never told apart
    print_table(results, distinct)
    table = capsys.readouterr().out
    assert "captain-bones" in table and "yes (6-0, 0.0312)" in table
