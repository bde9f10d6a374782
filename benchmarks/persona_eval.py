"""Persona fidelity: is each shipped adapter in character past its catchphrase, more than a
catchphrase stuck on the base's answer, in a voice told apart from the others', while keeping
what the base knows?

    python -m benchmarks.persona_eval --device cpu          # every persona with markers
    python -m benchmarks.persona_eval --personas bard dusty --limit 3 --max-tokens 64  # smoke

Contract.
  Personas: each folder of --registry with an adapter and a persona.json holding `markers` and
  a catchphrase: the `greeting`'s first sentence (else the first example reply's first sentence).
  Prompts: the held-out prompts (topics no adapter was trained on) and facts.jsonl.
  Sampling: every reply, in every condition, runs with the persona card's `sampling` (temperature,
  top_p, top_k, min_p, the penalties; a knob the card leaves out takes the server's fallback) and
  `max_tokens` from the card, else the server's CAMEO_DEFAULT_MAX_TOKENS (--max-tokens replaces
  it for every reply); held-out prompt i (and factual question i) draws from seed --seed + i in
  every condition, so the conditions differ only in what they are.
  Base: the embedded model (--base-model) with its weights as the server serves them on this
  device by default (int4 on a CPU, NF4 on CUDA; --quantization to choose).
  Conditions, through Cameo's own engine:
    adapter      the adapter, with the messages the server builds for the persona (system prompt,
                 framed example dialogue, the user turn): the persona as served;
    prompt-only  the same messages on the plain base;
    wrapper      the plain base's answer to the bare prompt with the catchphrase prepended: the
                 cheap fake a persona must beat.
  Measures (the text helpers are `adapters.training.personas`):
    voice        per reply, the share of its middle's sentences (the reply less its first and last
                 sentence) that hold a marker; 0 for an empty or looping reply and for one of two
                 sentences or fewer (no middle). A condition's voice is the mean over prompts.
    failed       share of replies empty or looping; no_middle: share with no middle.
    beats        the adapter's mean voice above the wrapper's (or prompt-only's) and, prompt by
                 prompt, more wins than losses at two-sided sign-test p < 0.05.
    facts        share of facts.jsonl answered correctly (an accepted answer as a whole word) by the
                 adapter as served and by the plain base (the wrapper's facts are the base's).
    language     over the held-out prompts in another language than English (Spanish, French,
                 German), the share of replies in the prompt's language and not failed
                 (`personas.language_of`: by common words; none when no such prompt).
    distinct     nearest centroid, leave-one-out, over unit word-count vectors of the replies'
                 middles: the share of replies whose own persona's centroid is strictly the most
                 similar (cosine); a reply with no middle is never attributed. Per persona and
                 overall, with the chance level 1/k for k personas.
  Output: the command, machine and date first, one table, then one JSON line with every number,
  last. --save writes every reply with its scores as JSONL.
  Not measured: style beyond the markers, fluency, truth beyond facts.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from adapters.training.engine_io import adapter_ref, build_engine, complete
from adapters.training.personas import (
    failed,
    in_voice,
    language_of,
    middle,
    sentences,
    voice_score,
    words,
)
from server.api.prompt import build_messages, encode_prompt
from server.api.schemas import ChatMessage
from server.engine.types import AdapterRef, SamplingParams
from server.registry.personas import Persona, PersonaCard, parse_card
from server.service.local import LocalEngineService

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "adapters" / "training" / "data"
SIGNIFICANCE = 0.05
CONDITIONS = ("adapter", "prompt_only", "wrapper")
Messages = list[dict[str, Any]]
Vector = dict[str, float]


# ------------------------------------------------------------------ personas and their cards


@dataclass(frozen=True)
class EvalPersona:
    """A persona under evaluation: its folder (adapter files) and its parsed card."""

    name: str
    folder: Path
    card: PersonaCard

    @property
    def markers(self) -> list[str]:
        return list(self.card.markers)

    @property
    def catchphrase(self) -> str:
        return catchphrase(self.card)


def catchphrase(card: PersonaCard) -> str:
    """The greeting's first sentence, else the first example reply's; "" when there is neither."""
    replies = [m["content"] for m in card.example_messages if m.get("role") == "assistant"]
    for text in (card.greeting, *replies):
        first = sentences(text)[:1]
        if first:
            return first[0]
    return ""


def load_personas(registry: Path, names: Sequence[str] | None) -> list[EvalPersona]:
    """The evaluable personas of `registry` (adapter, markers, catchphrase), by folder name."""
    personas = []
    for folder in sorted(registry.iterdir()):
        card_path = folder / "persona.json"
        if names and folder.name not in names:
            continue
        if not (folder / "adapter_config.json").is_file() or not card_path.is_file():
            continue
        card = parse_card(json.loads(card_path.read_text(encoding="utf-8")), folder.name)
        persona = EvalPersona(folder.name, folder, card)
        if not persona.markers or not persona.catchphrase:
            print(f"skipping {folder.name}: persona.json has no markers or no greeting",
                  file=sys.stderr)
            continue
        personas.append(persona)
    missing = set(names or ()) - {p.name for p in personas}
    if missing:
        raise SystemExit(f"no evaluable persona named {', '.join(sorted(missing))} in {registry}")
    return personas


def wrap(phrase: str, answer: str) -> str:
    """The wrapper baseline: `answer` with the catchphrase prepended, nothing else changed."""
    return f"{phrase} {answer}".strip()


def served_messages(persona: EvalPersona, user: str) -> Messages:
    """The messages the server builds for one user turn to this persona."""
    served = Persona(persona.name, persona.card, None)
    return build_messages([ChatMessage(role="user", content=user)], served)


def plain_messages(user: str) -> Messages:
    return [{"role": "user", "content": user}]


def card_params(sampling: Mapping[str, float], *, max_tokens: int, seed: int) -> SamplingParams:
    """The card's sampling, each knob it leaves out at the server's fallback (OpenAI's)."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=sampling.get("temperature", 1.0),
        top_p=sampling.get("top_p", 1.0),
        top_k=int(sampling.get("top_k", 0)),
        min_p=sampling.get("min_p", 0.0),
        repetition_penalty=sampling.get("repetition_penalty", 1.0),
        frequency_penalty=sampling.get("frequency_penalty", 0.0),
        presence_penalty=sampling.get("presence_penalty", 0.0),
        seed=seed,
    )


def reply_budget(card: PersonaCard, override: int | None, server_default: int) -> int:
    """Tokens per held-out reply: --max-tokens, else the card's, else the server's default."""
    if override is not None:
        return override
    return int(card.sampling.get("max_tokens", server_default))


# ------------------------------------------------------------------ measures


@dataclass(frozen=True)
class ConditionScore:
    """One condition's replies for one persona, scored."""

    voice: float  # mean voice_score
    failed: float  # share empty or looping
    no_middle: float  # share (not failed) of two sentences or fewer
    any_marker: float  # the old measure, for comparison: a marker anywhere, not failed
    per_reply: tuple[float, ...]  # voice_score of each reply, in prompt order


def score_condition(replies: Sequence[str], markers: list[str]) -> ConditionScore:
    per_reply = tuple(voice_score(r, markers) for r in replies)
    n = max(1, len(replies))
    return ConditionScore(
        voice=sum(per_reply) / n,
        failed=sum(failed(r) for r in replies) / n,
        no_middle=sum(not failed(r) and not middle(r) for r in replies) / n,
        any_marker=sum(in_voice(r, markers) for r in replies) / n,
        per_reply=per_reply,
    )


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if either side
    wins each non-tied prompt with probability 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    """Prompt-by-prompt comparison of two conditions' voice scores."""
    wins = sum(a > b for a, b in zip(ours, theirs, strict=True))
    losses = sum(a < b for a, b in zip(ours, theirs, strict=True))
    p = sign_test(wins, losses)
    higher = sum(ours) > sum(theirs)
    return {"wins": wins, "losses": losses, "ties": len(ours) - wins - losses,
            "p": round(p, 6), "beats": bool(higher and wins > losses and p < SIGNIFICANCE)}


def word_vector(text: str) -> Vector:
    """Word counts of `text`, scaled to unit length ({} for no words)."""
    counts = Counter(words(text))
    norm = math.sqrt(sum(c * c for c in counts.values()))
    return {w: c / norm for w, c in counts.items()} if norm else {}


def _add(vectors: Sequence[Vector]) -> Vector:
    total: Vector = {}
    for vector in vectors:
        for w, x in vector.items():
            total[w] = total.get(w, 0.0) + x
    return total


def _cosine(a: Vector, b: Vector) -> float:
    norm = math.sqrt(sum(x * x for x in b.values()))
    return sum(x * b.get(w, 0.0) for w, x in a.items()) / norm if norm > 1e-12 else 0.0


def attributed(vector: Vector, own: str, sums: Mapping[str, Vector]) -> bool:
    """Whether `own`'s centroid, less this reply itself, is strictly the most similar."""
    if not vector:
        return False
    mine = _cosine(vector, {w: x - vector.get(w, 0.0) for w, x in sums[own].items()})
    return all(mine > _cosine(vector, total) for name, total in sums.items() if name != own)


def distinctness(texts: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Leave-one-out nearest-centroid attribution of each text to its persona."""
    vectors = {name: [word_vector(t) for t in group] for name, group in texts.items()}
    sums = {name: _add(group) for name, group in vectors.items()}
    hits = {name: [attributed(v, name, sums) for v in group] for name, group in vectors.items()}
    total = sum(len(h) for h in hits.values())
    return {
        "per_persona": {name: round(sum(h) / max(1, len(h)), 4) for name, h in hits.items()},
        "overall": round(sum(sum(h) for h in hits.values()) / max(1, total), 4),
        "chance": round(1 / max(1, len(texts)), 4),
    }


def middle_text(reply: str) -> str:
    """What the distinctness classifier reads: the middle, or nothing for a failed reply."""
    return "" if failed(reply) else " ".join(middle(reply))


def correct(answer: str, accepted: Sequence[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.IGNORECASE)
               for a in accepted)


def language_match(prompts: Sequence[str], replies: Sequence[str]) -> float | None:
    """The share of replies to non-English prompts in the prompt's language, not failed."""
    asked = [(language_of(p), r) for p, r in zip(prompts, replies, strict=True)
             if language_of(p) != "en"]
    if not asked:
        return None
    return round(sum(language_of(r) == lang and not failed(r) for lang, r in asked)
                 / len(asked), 4)


def score_persona(persona: EvalPersona, replies: Mapping[str, Sequence[str]],
                  facts: Mapping[str, Sequence[bool]],
                  prompts: Sequence[str] = ()) -> dict[str, Any]:
    """Every number for one persona; `replies` by condition (CONDITIONS), `facts` by
    "adapter" and "base" (one bool per question); `prompts`, the held-out prompts the replies
    answer, for the language measure (left out: no language measure)."""
    scores = {c: score_condition(replies[c], persona.markers) for c in CONDITIONS}

    def per(field: str) -> dict[str, float]:
        return {c: round(getattr(scores[c], field), 4) for c in CONDITIONS}

    return {
        "catchphrase": persona.catchphrase,
        "voice": per("voice"), "failed": per("failed"), "no_middle": per("no_middle"),
        "any_marker": per("any_marker"),
        "vs_wrapper": paired(scores["adapter"].per_reply, scores["wrapper"].per_reply),
        "vs_prompt_only": paired(scores["adapter"].per_reply, scores["prompt_only"].per_reply),
        "facts": {k: round(sum(v) / max(1, len(v)), 4) for k, v in facts.items()},
        "facts_questions": len(facts["base"]),
        "language": ({c: language_match(prompts, replies[c]) for c in CONDITIONS}
                     if prompts else {}),
    }


# ------------------------------------------------------------------ generation


@dataclass(frozen=True)
class Request:
    """One reply to generate: prompt tokens, sampling, and the adapter (None: the base)."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    adapter: AdapterRef | None = None


def generate(engine: LocalEngineService, requests: Sequence[Request], *,
             timeout: float) -> list[str]:
    """The reply to every request (identical requests generated once), all submitted at once."""
    unique = list(dict.fromkeys(requests))
    replies = complete(engine, [(r.prompt_ids, r.params, r.adapter) for r in unique],
                       label="persona_eval", timeout=timeout)
    texts = dict(zip(unique, replies, strict=True))
    return [texts[r] for r in requests]


# (kind: heldout | facts, condition: adapter | prompt_only | base, persona)
Key = tuple[str, str, str]


def plan(personas: Sequence[EvalPersona], prompts: Sequence[str], questions: Sequence[str],
         tokenizer: Any, *, budget: Mapping[str, int], fact_tokens: int,
         seed: int) -> dict[Key, list[Request]]:
    """Every request, by (kind, condition, persona), in prompt order."""
    def encode(messages: Messages) -> tuple[int, ...]:
        return tuple(encode_prompt(tokenizer, messages))

    jobs: dict[Key, list[Request]] = {}
    for persona in personas:
        ref = adapter_ref(persona.name, persona.folder)
        for kind, texts, tokens in (("heldout", prompts, budget[persona.name]),
                                    ("facts", questions, fact_tokens)):
            params = [card_params(persona.card.sampling, max_tokens=tokens, seed=seed + i)
                      for i in range(len(texts))]
            served = [encode(served_messages(persona, t)) for t in texts]
            jobs[(kind, "adapter", persona.name)] = [
                Request(ids, p, ref) for ids, p in zip(served, params, strict=True)]
            if kind == "heldout":
                jobs[(kind, "prompt_only", persona.name)] = [
                    Request(ids, p) for ids, p in zip(served, params, strict=True)]
            jobs[(kind, "base", persona.name)] = [
                Request(encode(plain_messages(t)), p) for t, p in zip(texts, params, strict=True)]
    return jobs


def run_plan(engine: LocalEngineService, jobs: Mapping[Key, list[Request]], *,
             timeout: float) -> dict[Key, list[str]]:
    flat = [r for group in jobs.values() for r in group]
    texts = iter(generate(engine, flat, timeout=timeout))
    return {key: [next(texts) for _ in group] for key, group in jobs.items()}


# ------------------------------------------------------------------ report


def machine(device: torch.device) -> str:
    """The machine in words: CPU model and cores, accelerator, torch."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    accel = torch.cuda.get_device_name(device) if device.type == "cuda" else "no accelerator"
    return (f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {accel}, "
            f"torch {torch.__version__}, {platform.system()} {platform.machine()}")


def replies_for(outputs: Mapping[Key, list[str]], persona: EvalPersona) -> dict[str, list[str]]:
    """The held-out replies of each condition, the wrapper built from the base's."""
    base = outputs[("heldout", "base", persona.name)]
    return {"adapter": outputs[("heldout", "adapter", persona.name)],
            "prompt_only": outputs[("heldout", "prompt_only", persona.name)],
            "wrapper": [wrap(persona.catchphrase, b) for b in base]}


def print_table(results: Mapping[str, Mapping[str, Any]], distinct: Mapping[str, Any]) -> None:
    print(f"{'persona':<15}{'voice: adapter':>15}{'prompt-only':>12}{'wrapper':>9}"
          f"{'failed a/p/w':>15}{'beats wrapper (W-L, p)':>25}{'facts a/base':>14}"
          f"{'distinct':>10}")
    for name, row in results.items():
        v, f, w = row["voice"], row["failed"], row["vs_wrapper"]
        fails = f"{f['adapter']:.0%}/{f['prompt_only']:.0%}/{f['wrapper']:.0%}"
        verdict = f"{'yes' if w['beats'] else 'no'} ({w['wins']}-{w['losses']}, {w['p']:.3g})"
        facts = f"{row['facts']['adapter']:.0%}/{row['facts']['base']:.0%}"
        own = f"{distinct['adapter']['per_persona'][name]:.0%}" if distinct else "-"
        print(f"{name:<15}{v['adapter']:>15.1%}{v['prompt_only']:>12.1%}{v['wrapper']:>9.1%}"
              f"{fails:>15}{verdict:>25}{facts:>14}{own:>10}")
    for condition, result in distinct.items():
        shares = ", ".join(f"{n} {a:.0%}" for n, a in result["per_persona"].items())
        print(f"distinctness ({condition}): {result['overall']:.1%} of replies attributed to "
              f"their own persona (chance {result['chance']:.1%}); {shares}")
    languages = {name: row["language"] for name, row in results.items()
                 if row.get("language", {}).get("adapter") is not None}
    if languages:
        shares = ", ".join(f"{n} {v['adapter']:.0%} (prompt-only {v['prompt_only']:.0%})"
                           for n, v in languages.items())
        print(f"language: replies to non-English prompts in their language, not failed: "
              f"{shares}")


def show(persona: EvalPersona, prompts: Sequence[str], replies: Mapping[str, Sequence[str]],
         count: int) -> None:
    for i, prompt in enumerate(prompts[:count]):
        print(f"  [{persona.name}] > {prompt}")
        for condition in CONDITIONS:
            reply = replies[condition][i]
            print(f"      {condition} (voice {voice_score(reply, persona.markers):.2f}): {reply}")


def save(path: Path, personas: Sequence[EvalPersona], prompts: Sequence[str],
         facts: Sequence[Mapping[str, Any]], outputs: Mapping[Key, list[str]], seed: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for persona in personas:
            for condition, replies in replies_for(outputs, persona).items():
                for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
                    handle.write(json.dumps({
                        "kind": "heldout", "persona": persona.name, "condition": condition,
                        "prompt": prompt, "seed": seed + i, "reply": reply,
                        "voice": voice_score(reply, persona.markers), "failed": failed(reply),
                        "middle": middle(reply)}) + "\n")
            for condition in ("adapter", "base"):
                answers = outputs[("facts", condition, persona.name)]
                for i, (fact, answer) in enumerate(zip(facts, answers, strict=True)):
                    handle.write(json.dumps({
                        "kind": "fact", "persona": persona.name, "condition": condition,
                        "prompt": fact["question"], "seed": seed + i, "reply": answer,
                        "correct": correct(answer, fact["answers"])}) + "\n")


def read_inputs(prompts_file: Path, facts_file: Path, limit: int | None,
                fact_limit: int | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The held-out prompts and the facts, each cut to its limit when one is given."""
    prompts = [p for p in prompts_file.read_text(encoding="utf-8").splitlines() if p.strip()]
    facts = [json.loads(line) for line in facts_file.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    return prompts[:limit], facts[:fact_limit]


def score_all(personas: Sequence[EvalPersona], facts: Sequence[Mapping[str, Any]],
              outputs: Mapping[Key, list[str]],
              prompts: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every persona's numbers (`score_persona` plus its own distinctness) and the
    distinctness of each condition (none for a single persona)."""
    results: dict[str, Any] = {}
    middles: dict[str, dict[str, list[str]]] = {c: {} for c in CONDITIONS}
    for persona in personas:
        replies = replies_for(outputs, persona)
        hits = {c: [correct(a, f["answers"]) for a, f in
                    zip(outputs[("facts", c, persona.name)], facts, strict=True)]
                for c in ("adapter", "base")}
        results[persona.name] = score_persona(persona, replies, hits, prompts)
        for condition in CONDITIONS:
            middles[condition][persona.name] = [middle_text(r) for r in replies[condition]]
    distinct = ({c: distinctness(texts) for c, texts in middles.items()}
                if len(personas) > 1 else {})
    for name, row in results.items():
        row["distinct"] = {c: d["per_persona"][name] for c, d in distinct.items()}
    return results, distinct


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.persona_eval",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "adapters" / "registry")
    parser.add_argument("--personas", nargs="*", help="names (default: all with markers)")
    parser.add_argument("--prompts", type=Path, default=DATA / "prompts_heldout.txt")
    parser.add_argument("--facts", type=Path, default=DATA / "facts.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out prompts only")
    parser.add_argument("--fact-limit", type=int, default=None, help="first N facts only")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="per held-out reply, for every persona (default: the card's, else "
                             "the server's CAMEO_DEFAULT_MAX_TOKENS, as served)")
    parser.add_argument("--fact-tokens", type=int, default=40, help="per factual answer")
    parser.add_argument("--seed", type=int, default=0, help="prompt i draws from seed + i")
    parser.add_argument("--batch-size", type=int, default=16, help="engine rows")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds, all replies")
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument("--quantization", choices=["auto", "nf4", "int4", "none"],
                        default="auto", help="the base's weights (auto: as the server serves "
                        "them on this device, int4 on a CPU and NF4 on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--show", type=int, default=0, help="print N sample replies per persona")
    parser.add_argument("--save", type=Path, help="write every reply to this JSONL file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.persona_eval",
                          *(sys.argv[1:] if argv is None else argv)])
    from server.model.loader import load_base
    from server.settings import Settings

    started = time.monotonic()
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    personas = load_personas(args.registry, args.personas)
    prompts, facts = read_inputs(args.prompts, args.facts, args.limit, args.fact_limit)
    settings = Settings(base_model=args.base_model, quantization=args.quantization,
                        device=args.device)
    budget = {p.name: reply_budget(p.card, args.max_tokens, settings.default_max_tokens)
              for p in personas}
    loaded = load_base(settings)
    described = machine(loaded.device)
    print(f"command: {command}\nmachine: {described}\ndate: {date}", flush=True)
    jobs = plan(personas, prompts, [f["question"] for f in facts], loaded.tokenizer,
                budget=budget, fact_tokens=args.fact_tokens, seed=args.seed)
    engine = build_engine(loaded, max_rows=args.batch_size, adapter_slots=max(1, len(personas)))
    try:
        outputs = run_plan(engine, jobs, timeout=args.timeout)
    finally:
        engine.close()

    results, distinct = score_all(personas, facts, outputs, prompts)
    for persona in personas:
        results[persona.name].update(sampling=dict(persona.card.sampling),
                                     max_tokens=budget[persona.name])
        show(persona, prompts, replies_for(outputs, persona), args.show)

    print(f"\n{len(prompts)} held-out prompts, {len(facts)} factual questions; each persona's "
          "card sampling, seeded. voice = share of the middle's sentences (first and last "
          "removed) holding a marker; empty, looping or no-middle replies score 0")
    print_table(results, distinct)
    if args.save:
        save(args.save, personas, prompts, facts, outputs, args.seed)
    print(json.dumps({
        "benchmark": "persona_eval", "command": command, "machine": described, "date": date,
        "base_model": loaded.model_id, "quantization": loaded.quantization,
        "device": str(loaded.device), "heldout_prompts": len(prompts), "facts": len(facts),
        "seed": args.seed, "fact_tokens": args.fact_tokens, "significance": SIGNIFICANCE,
        "personas": results, "distinctness": distinct,
        "seconds": round(time.monotonic() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
