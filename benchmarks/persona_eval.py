"""Are the shipped personas in character, and do they still know what the base knows?

    python -m benchmarks.persona_eval                      # every persona with markers
    python -m benchmarks.persona_eval --personas bard --show 3

Over the held-out prompts (`adapters/training/data/prompts_heldout.txt`: topics the adapters
never saw), greedy, through Cameo's own engine (continuous batching, adapters in slots), it
prints per persona the share of answers in character, judged by the persona's own `markers`
(persona.json: whole words, case-insensitive, at least one; an answer that is a repetition loop,
fewer than 35% distinct words among 8 or more, never counts) for
  (a) adapter: the persona's adapter with its system prompt, as the server runs it,
  (b) prompt-only: the base with only the persona's system prompt,
  (c) base: the plain base (no system prompt of ours);
and the retained ability: short factual questions (`facts.jsonl`) answered correctly with each
adapter (as served) against the plain base. The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adapters.training.engine_io import Job, adapter_ref, build_engine, generate
from adapters.training.personas import in_voice, repetitive

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "adapters" / "training" / "data"


def load_personas(registry: Path, names: list[str] | None) -> dict[str, dict[str, Any]]:
    personas = {}
    for folder in sorted(registry.iterdir()):
        card_path = folder / "persona.json"
        if not (folder / "adapter_config.json").is_file() or not card_path.is_file():
            continue
        if names and folder.name not in names:
            continue
        card = json.loads(card_path.read_text(encoding="utf-8"))
        if not card.get("markers"):
            print(f"skipping {folder.name}: persona.json has no markers", file=sys.stderr)
            continue
        personas[folder.name] = {"folder": folder, "card": card}
    missing = set(names or ()) - set(personas)
    if missing:
        raise SystemExit(f"no evaluable persona named {', '.join(sorted(missing))} in {registry}")
    return personas


def correct(answer: str, accepted: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.IGNORECASE)
               for a in accepted)


def chat(system: str | None, user: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.persona_eval",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=ROOT / "adapters" / "registry")
    parser.add_argument("--personas", nargs="*", help="names (default: all with markers)")
    parser.add_argument("--prompts", type=Path, default=DATA / "prompts_heldout.txt")
    parser.add_argument("--facts", type=Path, default=DATA / "facts.jsonl")
    parser.add_argument("--max-tokens", type=int, default=48, help="per held-out answer")
    parser.add_argument("--fact-tokens", type=int, default=40, help="per factual answer")
    parser.add_argument("--limit", type=int, default=None, help="first N held-out prompts only")
    parser.add_argument("--batch-size", type=int, default=16, help="engine rows")
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--show", type=int, default=0, help="print N sample answers per persona")
    parser.add_argument("--save", type=Path, help="write every answer to this JSONL file")
    args = parser.parse_args(argv)

    from server.model.loader import load_base
    from server.settings import Settings

    started = time.monotonic()
    personas = load_personas(args.registry, args.personas)
    prompts = [p for p in args.prompts.read_text(encoding="utf-8").splitlines() if p.strip()]
    prompts = prompts[: args.limit] if args.limit else prompts
    facts = [json.loads(line) for line in args.facts.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    loaded = load_base(Settings(base_model=args.base_model, quantization="nf4",
                                device=args.device))
    engine = build_engine(loaded, max_rows=args.batch_size,
                          adapter_slots=max(1, len(personas)))
    # Every (condition, persona, prompt) job, generated in two batched passes.
    held: list[tuple[str, str | None, str, Job]] = [
        ("base", None, p, Job(chat(None, p))) for p in prompts]
    fact_jobs: list[tuple[str, str | None, int, Job]] = [
        ("base", None, i, Job(chat(None, f["question"]))) for i, f in enumerate(facts)]
    for name, persona in personas.items():
        system = persona["card"].get("system_prompt") or None
        ref = adapter_ref(name, persona["folder"])
        held += [("adapter", name, p, Job(chat(system, p), ref)) for p in prompts]
        held += [("prompt_only", name, p, Job(chat(system, p))) for p in prompts]
        fact_jobs += [("adapter", name, i, Job(chat(system, f["question"]), ref))
                      for i, f in enumerate(facts)]
    try:
        held_answers = generate(engine, loaded.tokenizer, [j for *_, j in held],
                                max_tokens=args.max_tokens, label="held-out")
        fact_answers = generate(engine, loaded.tokenizer, [j for *_, j in fact_jobs],
                                max_tokens=args.fact_tokens, label="facts")
    finally:
        engine.close()

    by_condition: dict[tuple[str, str | None], list[str]] = {}
    for (condition, who, _, _), answer in zip(held, held_answers, strict=True):
        by_condition.setdefault((condition, who), []).append(answer)
    fact_ok: dict[tuple[str, str | None], list[bool]] = {}
    for (condition, who, index, _), answer in zip(fact_jobs, fact_answers, strict=True):
        fact_ok.setdefault((condition, who), []).append(correct(answer, facts[index]["answers"]))

    def share(answers: list[str], markers: list[str]) -> float:
        return sum(in_voice(a, markers) for a in answers) / len(answers)

    def loops(answers: list[str]) -> float:
        return sum(repetitive(a) for a in answers) / len(answers)

    base_facts = sum(fact_ok[("base", None)])
    results: dict[str, Any] = {}
    print(f"\n{len(prompts)} held-out prompts, {len(facts)} factual questions, greedy, "
          f"max {args.max_tokens} tokens; in character = at least one of the persona's markers "
          f"and not a repetition loop (loops = share of looping answers)")
    print(f"{'persona':<16}{'adapter':>9}{'prompt-only':>13}{'base':>8}{'loops a/p/b':>16}"
          f"{'facts adapter':>15}{'facts base':>12}")
    for name, persona in personas.items():
        markers = persona["card"]["markers"]
        row = {
            "adapter": share(by_condition[("adapter", name)], markers),
            "prompt_only": share(by_condition[("prompt_only", name)], markers),
            "base": share(by_condition[("base", None)], markers),
            "repetitive_adapter": loops(by_condition[("adapter", name)]),
            "repetitive_prompt_only": loops(by_condition[("prompt_only", name)]),
            "repetitive_base": loops(by_condition[("base", None)]),
            "facts_adapter": sum(fact_ok[("adapter", name)]) / len(facts),
            "facts_base": base_facts / len(facts),
        }
        results[name] = {k: round(v, 4) for k, v in row.items()}
        loop_cell = (f"{row['repetitive_adapter']:.0%}/{row['repetitive_prompt_only']:.0%}/"
                     f"{row['repetitive_base']:.0%}")
        print(f"{name:<16}{row['adapter']:>9.1%}{row['prompt_only']:>13.1%}{row['base']:>8.1%}"
              f"{loop_cell:>16}{sum(fact_ok[('adapter', name)]):>11}/{len(facts)}"
              f"{base_facts:>8}/{len(facts)}")
        for prompt, answer in list(zip(prompts, by_condition[("adapter", name)],
                                       strict=True))[: args.show]:
            print(f"    > {prompt}\n      {answer}")
    if args.save:
        with args.save.open("w", encoding="utf-8") as handle:
            for (condition, who, prompt, _), answer in zip(held, held_answers, strict=True):
                handle.write(json.dumps({"kind": "heldout", "condition": condition,
                                         "persona": who, "prompt": prompt,
                                         "answer": answer}) + "\n")
            for (condition, who, index, _), answer in zip(fact_jobs, fact_answers, strict=True):
                handle.write(json.dumps({"kind": "fact", "condition": condition,
                                         "persona": who, "prompt": facts[index]["question"],
                                         "answer": answer,
                                         "correct": correct(answer, facts[index]["answers"])})
                             + "\n")
    print(json.dumps({
        "benchmark": "persona_eval",
        "base_model": loaded.model_id,
        "quantization": loaded.quantization,
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "heldout_prompts": len(prompts),
        "facts": len(facts),
        "max_tokens": args.max_tokens,
        "personas": results,
        "seconds": round(time.monotonic() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
