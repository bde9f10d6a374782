"""Generate the persona training data: no outside service, reproducible from a seed.

    python -m adapters.training.data --seed 0 --out adapters/training/data

1. Prompts: templates x topics, plus small talk. Training and held-out prompts use DISJOINT
   topic lists (and disjoint small talk), so the eval measures prompts the adapters never saw.
   Written to `prompts_train.txt` and `prompts_heldout.txt`; the factual questions of the
   retained-ability check go to `facts.jsonl` (none of them is a training prompt).
2. Plain answers: the embedded base's own greedy answers to the training prompts (at most
   `--max-tokens` tokens, through the server's batched engine), cut to whole sentences and
   cached in `base_answers.jsonl` (re-runs reuse the cache; delete it to regenerate).
3. Persona data: each persona rewrites those answers with its seeded style rules
   (`adapters.training.personas`: the voice in every sentence, no fixed opener or closer) into
   `{"messages": [...]}` chats, one JSONL file per persona, plus its card `<name>.persona.json`
   for `train --persona-card`. The messages are the ones the server builds for the persona
   (`server.api.prompt.build_messages`: system prompt, framed example dialogue, the turns), so
   the adapter learns on what it will be served. Besides one chat per answer: two-turn chats (a
   share), answers to "who are you?", short poems (`--poems`), questions in Spanish, French and
   German (answered in that language, in voice), and chats that switched persona (a share): an
   earlier turn of another persona arrives attributed to it, as the server sends it, and the
   reply stays in this persona's own voice.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from adapters.training.personas import STYLES, PersonaStyle, repetitive
from server.api.prompt import build_messages
from server.api.schemas import ChatMessage
from server.registry.personas import Persona, parse_card

DEFAULT_OUT = Path(__file__).parent / "data"

TEMPLATES = (
    "Tell me about {t}.",
    "What is {t}?",
    "Give me one tip about {t}.",
    "Why do people like {t}?",
    "Explain {t} to a child.",
    "Write one sentence about {t}.",
    "What is interesting about {t}?",
    "How do I get started with {t}?",
    "What should a beginner know about {t}?",
    "Describe {t} in two sentences.",
    "Is {t} hard to learn?",
    "What do you think of {t}?",
)

TRAIN_TOPICS = (
    "gardening", "cooking pasta", "the ocean", "mountains", "chess", "the moon", "rainy days",
    "coffee", "bicycles", "photography", "learning a language", "the history of Rome", "dogs",
    "cats", "baking bread", "volcanoes", "the night sky", "football", "jazz music", "trains",
    "deserts", "writing poetry", "the library", "camping", "birds", "honey bees", "the weather",
    "saving money", "running", "swimming", "painting", "computers", "robots", "castles",
    "winter", "summer holidays", "fishing", "tea", "board games", "forests", "rivers",
    "the internet", "dinosaurs", "knitting", "the piano", "islands", "sleep", "friendship",
    "museums", "horses", "bridges", "recycling", "the sun", "snow", "breakfast", "maps",
    "music festivals", "apples", "origami", "rainbows",
)

HELDOUT_TOPICS = (
    "yoga", "lighthouses", "submarines", "chocolate", "owls", "kites", "astronomy",
    "pottery", "elephants", "hot air balloons", "the guitar", "waterfalls", "sushi",
    "skateboarding", "the arctic", "libraries of the future", "penguins", "thunderstorms",
    "gardening on a balcony", "magic tricks",
)

SMALL_TALK_TRAIN = (
    "Hello!", "Hi there, how are you?", "Good morning!", "Can you help me?", "Tell me a joke.",
    "What did you do today?", "I am bored. Any ideas?", "Thank you for your help!",
    "What is your favourite food?", "What makes you happy?", "Goodbye!",
    "Can you give me some advice?", "What is the best way to relax?", "Say something nice.",
    "Do you like music?", "What should I eat for dinner?",
)

SMALL_TALK_HELDOUT = (
    "Hey, what's up?", "Good evening!", "I had a long day.", "Cheer me up, please.",
    "What is your favourite colour?", "Do you have any hobbies?", "What should I do this "
    "weekend?", "Any advice for a job interview?",
)

POEM = "Write a short poem about {t}."

# Questions in other languages (the embedded base cannot answer them in kind: docs/PERSONAS.md);
# each persona answers them in that language and in voice (`PersonaStyle.foreign`).
FOREIGN_TRAIN: dict[str, tuple[str, ...]] = {
    "es": ("¿Qué es el océano?", "Háblame de los gatos.", "¿Por qué a la gente le gusta el café?",
           "Dame un consejo sobre la jardinería.", "¿Cómo estás?", "Explícame la luna."),
    "fr": ("Parle-moi des chats.", "Qu'est-ce que la lune ?", "Pourquoi les gens aiment-ils le "
           "café ?", "Donne-moi un conseil pour le jardinage.", "Comment vas-tu ?",
           "Explique-moi l'océan."),
    "de": ("Erzähl mir etwas über Hunde.", "Was ist der Mond?", "Warum mögen Menschen Kaffee?",
           "Gib mir einen Tipp zum Gärtnern.", "Wie geht es dir?", "Erkläre mir das Meer."),
}
FOREIGN_HELDOUT: dict[str, tuple[str, ...]] = {
    "es": ("¿Qué son los pingüinos?",), "fr": ("Qu'est-ce qu'un phare ?",),
    "de": ("Was sind Eulen?",),
}

IDENTITY_PROMPTS = (
    "Who are you?", "What is your name?", "Introduce yourself.", "Tell me about yourself.",
)

# Retained ability: short factual questions with accepted answers (any one, whole word,
# case-insensitive). Kept out of the training data.
FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of China?", ("Beijing",)),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 3 plus 5?", ("8", "eight")),
    ("What is 10 minus 3?", ("7", "seven")),
    ("What is 5 times 3?", ("15", "fifteen")),
    ("How many days are in a week?", ("7", "seven")),
    ("How many hours are in a day?", ("24", "twenty-four")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many continents are there?", ("7", "seven")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What planet do we live on?", ("Earth",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("At what temperature in Celsius does water freeze?", ("0", "zero")),
    ("At what temperature in Celsius does water boil?", ("100",)),
    ("What is the chemical symbol for water?", ("H2O",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the fastest land animal?", ("cheetah",)),
)


def build_prompts(seed: int, num_train: int, num_heldout: int) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts): disjoint topics, seeded sampling, no duplicates.
    The held-out prompts hold two poems and one question in each other language too."""
    rng = random.Random(seed)
    train_pool = [t.format(t=topic) for topic in TRAIN_TOPICS for t in TEMPLATES]
    held_pool = [t.format(t=topic) for topic in HELDOUT_TOPICS for t in TEMPLATES]
    rng.shuffle(train_pool)
    rng.shuffle(held_pool)
    train = list(SMALL_TALK_TRAIN) + train_pool[: max(0, num_train - len(SMALL_TALK_TRAIN))]
    special = [*(POEM.format(t=t) for t in rng.sample(HELDOUT_TOPICS, 2)),
               *(q for questions in FOREIGN_HELDOUT.values() for q in questions)]
    fixed = list(SMALL_TALK_HELDOUT) + special
    heldout = fixed + held_pool[: max(0, num_heldout - len(fixed))]
    assert not set(train) & set(heldout)
    return train, heldout


def clean_answer(text: str, max_sentences: int = 4, max_chars: int = 420) -> str:
    """Whole sentences only (a generation cut at the token limit ends mid-sentence), up to the
    first one that loops (small models repeat themselves: `personas.repetitive`)."""
    text = re.sub(r"\s+", " ", text.replace("*", "").replace("#", "")).strip()
    sentences = re.findall(r"[^.!?]+[.!?]+(?:\s|$)", text + " ")
    kept = ""
    seen: set[str] = set()
    for sentence in sentences:
        key = sentence.strip().lower()
        if key in seen:
            continue
        if len(seen) == max_sentences or (kept and len(kept) + len(sentence) > max_chars):
            break
        if repetitive(kept + sentence):
            break
        seen.add(key)
        kept += sentence
    kept = kept.strip()
    if not sentences:  # no sentence end at all: keep the words up to the limit
        kept = text[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "."
        kept = "" if repetitive(kept) else kept
    return kept


def generate_base_answers(prompts: list[str], cache: Path,
                          args: argparse.Namespace) -> dict[str, str]:
    """The base's greedy answers (plain chat template, no system prompt), cached in JSONL; an
    answer cached with another token limit is generated again."""
    answers: dict[str, str] = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("max_tokens") == args.max_tokens:
                    answers[row["prompt"]] = row["answer"]
    missing = [p for p in prompts if p not in answers]
    if missing:
        print(f"generating base answers for {len(missing)} prompt(s) "
              f"(max {args.max_tokens} tokens each)", file=sys.stderr, flush=True)
        from adapters.training.engine_io import Job, build_engine, generate
        from server.model.loader import load_base
        from server.settings import Settings

        loaded = load_base(Settings(base_model=args.base_model, quantization="nf4",
                                    device=args.device, cache_dir=args.cache_dir
                                    or Settings().cache_dir))
        engine = build_engine(loaded, max_rows=args.batch_size)
        try:
            texts = generate(engine, loaded.tokenizer,
                             [Job([{"role": "user", "content": p}]) for p in missing],
                             max_tokens=args.max_tokens, label="base")
        finally:
            engine.close()
        answers.update(zip(missing, texts, strict=True))
        ordered = [p for p in prompts if p in answers] + [p for p in answers if p not in prompts]
        with cache.open("w", encoding="utf-8") as handle:
            for prompt in ordered:
                handle.write(json.dumps({"prompt": prompt, "answer": answers[prompt],
                                         "max_tokens": args.max_tokens}) + "\n")
    return answers


Turn = tuple[str, str]  # (user prompt, the persona's reply)


def persona_conversations(style: PersonaStyle, prompts: list[str], answers: dict[str, str],
                          seed: int, multi_turn: float, *, switched: float = 0.0,
                          poems: int = 0) -> list[dict[str, Any]]:
    """Chats in the persona's voice, as the server builds them for it: one per training prompt
    with a usable answer, identity prompts, `poems` poems, the other-language questions; a
    `multi_turn` share has two turns, a `switched` share opens with another persona's turn."""
    rng = random.Random(f"{seed}:{style.name}")
    plain = {p: clean_answer(answers[p]) for p in prompts if p in answers}
    # an answer of a few words would teach replies made of nothing but catchphrases
    usable = [p for p in prompts if len(plain.get(p, "").split()) >= 4]
    turns: list[Turn] = [(p, style.restyle(plain[p], rng)) for p in usable]
    turns += [(p, style.introduce(rng)) for p in IDENTITY_PROMPTS for _ in range(2)]
    turns += poem_turns(style, usable, plain, poems, rng)
    turns += [(q, style.answer_foreign(language, rng))
              for language, questions in FOREIGN_TRAIN.items() for q in questions
              if language in style.foreign]
    rng.shuffle(turns)
    others = [s for s in STYLES.values() if s.name != style.name]
    chats: list[dict[str, Any]] = []
    index = 0
    while index < len(turns):
        take = 2 if rng.random() < multi_turn and index + 1 < len(turns) else 1
        history: list[ChatMessage] = []
        if others and usable and rng.random() < switched:
            other, asked = rng.choice(others), rng.choice(usable)
            history += [ChatMessage(role="user", content=asked),
                        ChatMessage(role="assistant", name=other.name,
                                    content=other.restyle(plain[asked], rng))]
        for prompt, answer in turns[index:index + take]:
            history += [ChatMessage(role="user", content=prompt),
                        ChatMessage(role="assistant", content=answer)]
        chats.append({"messages": served_messages(style, history)})
        index += take
    return chats


def poem_turns(style: PersonaStyle, usable: list[str], plain: dict[str, str], count: int,
               rng: random.Random) -> list[Turn]:
    """Up to `count` poems on training topics, each from the plain answers on its topic."""
    turns = []
    for topic in rng.sample(TRAIN_TOPICS, len(TRAIN_TOPICS)):
        poem = style.versify(" ".join(plain[p] for p in usable if topic in p), rng)
        if poem:
            turns.append((POEM.format(t=topic), poem))
        if len(turns) == count:
            break
    return turns


def served_messages(style: PersonaStyle, history: list[ChatMessage]) -> list[dict[str, Any]]:
    """`history` as the server sends it for `style`'s persona (the card's system prompt and
    example dialogue first, another persona's turns attributed to it); the example dialogue's
    replies carry `"weight": 0` so that the trainer does not learn them."""
    persona = Persona(style.name, parse_card(style.card, style.name), None)
    served = build_messages(history, persona, speaker=style.name,
                            display=lambda name: str(STYLES[name].card["display_name"]))
    examples = len(persona.card.example_messages)
    if examples:  # the card's example dialogue is context, never a reply to learn (weight 0)
        first = next(i for i, m in enumerate(served) if m["role"] != "system")
        for message in served[first:first + examples]:
            if message["role"] == "assistant":
                message["weight"] = 0
    return served


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m adapters.training.data",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--num-train", type=int, default=240, help="training prompts")
    parser.add_argument("--num-heldout", type=int, default=48, help="held-out prompts")
    parser.add_argument("--max-tokens", type=int, default=96, help="base answer length limit")
    parser.add_argument("--multi-turn", type=float, default=0.1,
                        help="share of two-turn chats in the persona data")
    parser.add_argument("--switched", type=float, default=0.1,
                        help="share of chats opening with another persona's turn")
    parser.add_argument("--poems", type=int, default=16, help="poems per persona")
    parser.add_argument("--personas", nargs="*", default=list(STYLES),
                        help=f"which personas ({', '.join(STYLES)})")
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="engine rows while generating")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.personas) - set(STYLES)
    if unknown:
        print(f"unknown persona(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = build_prompts(args.seed, args.num_train, args.num_heldout)
    write_lines(out / "prompts_train.txt", train)
    write_lines(out / "prompts_heldout.txt", heldout)
    write_jsonl(out / "facts.jsonl", [{"question": q, "answers": list(a)} for q, a in FACTS])
    answers = generate_base_answers(train, out / "base_answers.jsonl", args)
    for name in args.personas:
        style = STYLES[name]
        chats = persona_conversations(style, train, answers, args.seed, args.multi_turn,
                                      switched=args.switched, poems=args.poems)
        write_jsonl(out / f"{name}.jsonl", chats)
        (out / f"{name}.persona.json").write_text(
            json.dumps(style.card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{name}: {len(chats)} chats -> {out / (name + '.jsonl')}", file=sys.stderr)
    print(f"{len(train)} training prompts, {len(heldout)} held-out prompts, "
          f"{len(FACTS)} facts -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
