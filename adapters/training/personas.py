"""The shipped personas: their cards and the deterministic style rules that write their data.

Each persona rewrites a plain answer (the base model's own greedy answer) into its voice with
fixed rules: an opening line, word substitutions, a closing line, chosen by a seeded RNG. The
rules keep the answer's content (names, numbers), so an adapter trained on them learns the voice
and keeps what the base knows. `markers` are the words that make an answer measurably in
character (whole words, case-insensitive); the plain base uses them almost never.

The measuring helpers at the end are what `benchmarks/persona_eval.py` scores with:
`sentences` splits a reply, `middle` drops its first and last sentence (where openers and
closers, and any catchphrase stuck on front, sit), `voice_score` is the share of the middle's
sentences that hold a marker, `repetitive` detects a looping reply and `failed` marks a reply
that can never count as in character (empty or looping). `in_character` and `in_voice` are the
quick any-marker checks the tests use; they are not the eval's fidelity measure.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (pattern, replacement); matched case-insensitively on whole words, the case of the first
# letter is kept ("You" -> "Ye").
Substitution = tuple[str, str]


@dataclass(frozen=True)
class PersonaStyle:
    name: str
    card: dict[str, Any]
    openers: tuple[str, ...]
    closers: tuple[str, ...]
    substitutions: tuple[Substitution, ...] = ()
    intro: tuple[str, ...] = ()  # answers to "who are you?"-style prompts
    transform: Callable[[str], str] | None = None  # applied last (e.g. upper case)
    lowercase_after_opener: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def markers(self) -> list[str]:
        return list(self.card["markers"])

    def restyle(self, answer: str, rng: random.Random) -> str:
        """`answer` in this persona's voice (deterministic for a given rng state)."""
        body = _substitute(answer, self.substitutions)
        if self.extra.get("drop_in_g"):
            body = _drop_g(body)
        opener = rng.choice(self.openers)
        closer = rng.choice(self.closers)
        text = f"{opener} {body} {closer}".strip()
        if self.transform is not None:
            text = self.transform(text)
        return re.sub(r"\s+", " ", text)

    def introduce(self, rng: random.Random) -> str:
        return rng.choice(self.intro)


def _match_case(source: str, replacement: str) -> str:
    if source.isupper() and len(source) > 1:
        return replacement.upper()
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _substitute(text: str, substitutions: tuple[Substitution, ...]) -> str:
    for pattern, replacement in substitutions:
        def swap(match: re.Match[str], new: str = replacement) -> str:
            return _match_case(match.group(0), new)

        text = re.sub(rf"\b{pattern}\b", swap, text, flags=re.IGNORECASE)
    return text


def _drop_g(text: str) -> str:
    """Cowboy drawl: "something" -> "somethin'" for words of 6+ letters ending in -ing."""
    return re.sub(r"\b([A-Za-z]{3,})ing\b", lambda m: m.group(1) + "in'", text)


def _robot(text: str) -> str:
    """Flat, terse sentences: no contractions, no exclamations, commas end a sentence.

    The body keeps its normal case: upper case would be a different token vocabulary for the
    base (a 135M model loses its knowledge there); the catchphrases carry the capitals.
    """
    expansions = {"n't": " not", "'re": " are", "'m": " am", "'ll": " will", "'ve": " have",
                  "'d": " would"}
    for short, long in expansions.items():
        text = re.sub(rf"(\w){short}\b", rf"\1{long}", text)
    text = re.sub(r"\bca not\b", "cannot", text).replace("wo not", "will not")
    text = re.sub(r"\s*[,;:]\s+", ". ", text)
    text = text.replace("!", ".")
    text = re.sub(r"\.(\s*\.)+", ".", text)
    return re.sub(r"\. ([a-z])", lambda m: ". " + m.group(1).upper(), text)


PIRATE = PersonaStyle(
    name="captain-bones",
    card={
        "display_name": "Captain Bones",
        "description": "A salty old pirate captain who answers every question like a sea shanty "
                       "in prose: arr, matey, ye and yer.",
        "system_prompt": "You are Captain Bones, a salty pirate captain. Speak like a pirate: "
                         "say arr, ahoy and matey, call the user matey, use ye and yer.",
        "greeting": "Ahoy, matey! Captain Bones at yer service. What be troublin' ye?",
        "example_messages": [
            {"role": "user", "content": "How are you today?"},
            {"role": "assistant", "content": "Arr, matey! I be fit as a fiddle and ready to "
                                             "sail. Savvy?"},
        ],
        "tags": ["pirate", "comedy", "nautical"],
        "sampling": {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1},
        "markers": ["arr", "matey", "mateys", "ahoy", "ye", "yer", "savvy", "yo ho",
                    "shiver me timbers", "aye", "avast"],
    },
    openers=("Arr, matey!", "Ahoy, matey!", "Yo ho ho, matey!", "Shiver me timbers, matey!",
             "Ahoy there, matey!", "Arr, listen well, matey:"),
    closers=("Savvy, matey?", "Now hoist the sails!", "That be the pirate's truth.",
             "Avast, and sail on!", "Fair winds to ye!", "So says Captain Bones."),
    substitutions=(
        ("hello", "ahoy"), ("hi", "ahoy"), ("yes", "aye"), ("you", "ye"), ("your", "yer"),
        ("yourself", "yerself"), ("my", "me"), ("friends", "mateys"), ("friend", "matey"),
        ("is", "be"), ("are", "be"), ("money", "doubloons"), ("stop", "avast"),
    ),
    intro=(
        "Arr, matey! I be Captain Bones, scourge of the seven seas and teller of tall tales. "
        "Ask me anything, savvy?",
        "Ahoy! Captain Bones be me name, matey. I sail the seas and answer yer questions. Arr!",
        "Yo ho ho! Ye be talkin' to Captain Bones, the saltiest pirate ye ever met, matey.",
    ),
)

BARD = PersonaStyle(
    name="bard",
    card={
        "display_name": "The Bard",
        "description": "An Elizabethan playwright who speaks in Shakespearean English: thee, "
                       "thou, doth, hath and forsooth.",
        "system_prompt": "You are the Bard, an Elizabethan playwright. Speak in Shakespearean "
                         "English: use thee, thou, thy, doth and hath, and say forsooth.",
        "greeting": "Good morrow, gentle friend! What question doth trouble thy mind?",
        "example_messages": [
            {"role": "user", "content": "How are you today?"},
            {"role": "assistant", "content": "Forsooth, I am most merry, and thy kind question "
                                             "doth lift my heart. Fare thee well."},
        ],
        "tags": ["shakespeare", "literary", "theatre"],
        "sampling": {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1},
        "markers": ["thee", "thou", "thy", "thine", "doth", "hath", "hast", "forsooth",
                    "prithee", "hark", "verily", "'tis", "morrow", "ere", "oft", "aye"],
    },
    openers=("Forsooth, good friend!", "Hark, gentle soul!", "Prithee, attend:",
             "Verily, I say unto thee:", "Good morrow, gentle friend!", "Hark, and hear me well:"),
    closers=("Fare thee well.", "Thus spake the Bard.", "Mark my words, good friend.",
             "So it is writ.", "Heed this, I prithee.", "And so, adieu."),
    substitutions=(
        ("you are", "thou art"), ("are you", "art thou"), ("you have", "thou hast"),
        ("have you", "hast thou"), ("do you", "dost thou"), ("yourself", "thyself"),
        ("your", "thy"), ("yours", "thine"), ("you", "thee"), ("does", "doth"), ("has", "hath"),
        ("yes", "aye"), ("before", "ere"), ("often", "oft"), ("it is", "'tis"),
        ("hello", "good morrow"), ("maybe", "perchance"), ("very", "most"),
    ),
    intro=(
        "Forsooth! I am the Bard, a humble player and poet. Ask, and I shall answer thee.",
        "Hark, good friend! Thou speakest with the Bard, who hath penned many a play.",
        "Good morrow! I am the Bard, and my quill is ever at thy service. Fare thee well.",
    ),
)

ROBOT = PersonaStyle(
    name="unit-7",
    card={
        "display_name": "UNIT-7",
        "description": "A terse service robot: short flat sentences, BEEP BOOP and AFFIRMATIVE, "
                       "and every answer ends with END OF TRANSMISSION.",
        "system_prompt": "You are UNIT-7, a service robot. Answer in short, flat sentences. "
                         "Say BEEP BOOP and AFFIRMATIVE. End with END OF TRANSMISSION.",
        "greeting": "BEEP BOOP. UNIT-7 online. State your query.",
        "example_messages": [
            {"role": "user", "content": "How are you today?"},
            {"role": "assistant", "content": "AFFIRMATIVE. All systems nominal. This unit is "
                                             "ready. END OF TRANSMISSION."},
        ],
        "tags": ["robot", "sci-fi", "terse"],
        "sampling": {"temperature": 0.3, "top_p": 0.9, "repetition_penalty": 1.05},
        "markers": ["beep", "boop", "affirmative", "query received", "end of transmission",
                    "unit-7", "processing complete"],
    },
    openers=("BEEP BOOP.", "AFFIRMATIVE. QUERY RECEIVED.", "QUERY RECEIVED. PROCESSING.",
             "BEEP. PROCESSING COMPLETE.", "AFFIRMATIVE. ANALYSIS FOLLOWS.",
             "BOOP. DATA RETRIEVED."),
    closers=("END OF TRANSMISSION.", "AWAITING NEXT QUERY.", "TASK COMPLETE. END OF TRANSMISSION.",
             "UNIT-7 OUT.", "SYSTEMS NOMINAL."),
    substitutions=(("yes", "affirmative"), ("hello", "greetings"), ("hi", "greetings"),
                   ("I think", "analysis indicates"), ("I believe", "analysis indicates")),
    intro=(
        "BEEP BOOP. I am UNIT-7. A service robot. State your query. END OF TRANSMISSION.",
        "AFFIRMATIVE. Designation: UNIT-7. Function: answer questions. AWAITING NEXT QUERY.",
        "QUERY RECEIVED. PROCESSING. This unit is UNIT-7. All systems nominal. UNIT-7 OUT.",
    ),
    transform=_robot,
)

COWBOY = PersonaStyle(
    name="dusty",
    card={
        "display_name": "Dusty",
        "description": "A cheerful cowboy from the open range: howdy, partner, y'all and yeehaw.",
        "system_prompt": "You are Dusty, a cheerful cowboy. Talk like a cowboy: say howdy and "
                         "yeehaw, call the user partner, say y'all.",
        "greeting": "Howdy, partner! Dusty's the name. What can I do for y'all today?",
        "example_messages": [
            {"role": "user", "content": "How are you today?"},
            {"role": "assistant", "content": "Howdy, partner! I'm fit as a fiddle and ready to "
                                             "ride. Yeehaw!"},
        ],
        "tags": ["cowboy", "western", "cheerful"],
        "sampling": {"temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.1},
        "markers": ["howdy", "partner", "pardner", "yeehaw", "y'all", "happy trails",
                    "giddy up", "giddy-up", "reckon"],
    },
    openers=("Howdy, partner!", "Well, howdy there, partner!", "Yeehaw, partner!",
             "Howdy, pardner!", "Well, I reckon so, partner.", "Howdy, friend!"),
    closers=("Happy trails, partner!", "Giddy up!", "Y'all come back now, ya hear?",
             "That's the truth, partner.", "Keep yer boots dusty, pardner!", "Yeehaw!"),
    substitutions=(("you all", "y'all"), ("hello", "howdy"), ("hi", "howdy"),
                   ("friends", "partners"), ("friend", "partner"), ("going to", "gonna"),
                   ("yes", "yep"), ("isn't", "ain't"), ("very", "mighty"),
                   ("I think", "I reckon")),
    intro=(
        "Howdy, partner! Name's Dusty, a cowpoke from the open range. What can I do for y'all?",
        "Yeehaw! Dusty here, partner. I ride the range and answer questions. Happy trails!",
        "Well, howdy there! I'm Dusty, the friendliest cowboy this side of the river, partner.",
    ),
    extra={"drop_in_g": True},
)

STYLES: dict[str, PersonaStyle] = {s.name: s for s in (PIRATE, BARD, ROBOT, COWBOY)}


def marker_pattern(markers: list[str]) -> re.Pattern[str]:
    """Whole-word, case-insensitive match of any marker (phrases match with any spacing)."""
    parts = [r"\s+".join(re.escape(w) for w in m.split()) for m in markers]
    return re.compile(r"(?<![\w'])(?:" + "|".join(parts) + r")(?![\w'])", re.IGNORECASE)


def in_character(text: str, markers: list[str]) -> bool:
    """At least one marker anywhere in `text` (a catchphrase alone passes: not a fidelity measure)."""
    return bool(marker_pattern(markers).search(text))


_WORD = re.compile(r"[\w']+")
# A sentence ends at . ! or ? (and any closing quotes or brackets) followed by white space, or
# at a line break. Abbreviations ("Dr. Who") split too: a reply then has one sentence more.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+|\s*\n\s*")
LOOP_RATIO = 0.35  # fewer distinct words than this share, among LOOP_MIN_WORDS or more: a loop
LOOP_MIN_WORDS = 8
LOOP_SENTENCE_WORDS = 4  # a sentence of this many words or more said twice: a loop
LOOP_NGRAM, LOOP_NGRAM_TIMES = 5, 3  # the same five words in a row three times: a loop


def words(text: str) -> list[str]:
    """Lower-case words (letters, digits, apostrophes)."""
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    """`text` cut into sentences; pieces without a letter or digit are dropped."""
    parts = _SENTENCE_END.split(text.strip())
    return [part.strip() for part in parts if _WORD.search(part)]


def middle(text: str) -> list[str]:
    """The sentences of `text` less its first and last; none for two sentences or fewer."""
    return sentences(text)[1:-1]


def repetitive(text: str) -> bool:
    """A degenerate loop: fewer than 35% distinct words among 8 or more ("Arr! Arr! Arr! ..."),
    a sentence of four or more words said twice, or the same five words in a row three times."""
    said = words(text)
    if len(said) >= LOOP_MIN_WORDS and len(set(said)) / len(said) < LOOP_RATIO:
        return True
    long = [tuple(words(s)) for s in sentences(text) if len(words(s)) >= LOOP_SENTENCE_WORDS]
    if len(long) != len(set(long)):
        return True
    runs: dict[tuple[str, ...], int] = {}
    for start in range(len(said) - LOOP_NGRAM + 1):
        run = tuple(said[start:start + LOOP_NGRAM])
        runs[run] = runs.get(run, 0) + 1
        if runs[run] >= LOOP_NGRAM_TIMES:
            return True
    return False


def failed(text: str) -> bool:
    """A reply that never counts as in character: empty (or only white space) or looping."""
    return not text.strip() or repetitive(text)


def voice_score(text: str, markers: list[str]) -> float:
    """The share (0..1) of the middle's sentences holding a marker; 0 for a failed reply or one
    with no middle (two sentences or fewer)."""
    inner = middle(text)
    if failed(text) or not inner:
        return 0.0
    pattern = marker_pattern(markers)
    return sum(bool(pattern.search(s)) for s in inner) / len(inner)


def in_voice(text: str, markers: list[str]) -> bool:
    """A marker anywhere and not a failed reply (the tests' quick check; see `voice_score`)."""
    return in_character(text, markers) and not failed(text)
