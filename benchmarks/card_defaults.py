"""What a prompt-only persona (a card with no adapter) says at OpenAI's sampling defaults and at
Cameo's `PROMPT_ONLY_DEFAULTS`, on the embedded base.

    python -m benchmarks.card_defaults            # 8 held-out prompts, seeded

The persona is a SillyTavern-style card imported the way `POST /v1/personas/import` imports it
(`server.registry.cards.card_from_v2`), prompted the way the chat route prompts it
(`server.api.prompt`), run through Cameo's own engine. Per condition: how many replies ended on
their own (EOS) rather than at the token limit, the mean reply length in tokens, and the share
of distinct words (a reply that rambles in circles scores low). The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from server.api.prompt import build_messages, encode_prompt
from server.api.sampling import PROMPT_ONLY_DEFAULTS
from server.api.schemas import ChatMessage
from server.engine.engine import EngineConfig
from server.engine.types import GenerationRequest, RequestOutput, SamplingParams
from server.model.loader import load_base
from server.registry.cards import card_from_v2
from server.registry.personas import Persona
from server.service.local import LocalEngineService
from server.settings import Settings

PROMPTS = Path(__file__).resolve().parent.parent / "adapters" / "training" / "data" / \
    "prompts_heldout.txt"
CARD = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
    "name": "Captain Mira", "description": "{{char}} is a cheerful airship captain.",
    "personality": "brave, warm, fond of weather talk", "scenario": "On the deck at dawn.",
    "first_mes": "Welcome aboard!", "mes_example": "", "system_prompt": "",
    "post_history_instructions": "", "tags": [], "creator_notes": "",
    "alternate_greetings": []}}


def run(service: LocalEngineService, prompts: list[tuple[int, ...]],
        params: list[SamplingParams]) -> list[RequestOutput]:
    done = threading.Semaphore(0)
    finals: dict[str, RequestOutput] = {}
    texts: dict[str, list[str]] = {}

    def sink(output: RequestOutput) -> None:
        texts.setdefault(output.request_id, []).append(output.text)
        if output.finished:
            finals[output.request_id] = output
            done.release()

    for index, (prompt, sampling) in enumerate(zip(prompts, params, strict=True)):
        service.submit(GenerationRequest(f"r{index}", prompt, sampling), sink)
    for _ in prompts:
        done.acquire()
    return [RequestOutput(request_id=rid, text="".join(texts[rid]),
                          finish_reason=finals[rid].finish_reason,
                          completion_tokens=finals[rid].completion_tokens)
            for rid in sorted(finals, key=lambda r: int(r[1:]))]


def summary(outputs: list[RequestOutput]) -> dict[str, float]:
    def distinct(text: str) -> float:
        words = text.lower().split()
        return len(set(words)) / len(words) if words else 0.0
    return {
        "ended_on_their_own": sum(o.finish_reason == "stop" for o in outputs) / len(outputs),
        "mean_tokens": sum(o.completion_tokens for o in outputs) / len(outputs),
        "mean_distinct_words": sum(distinct(o.text) for o in outputs) / len(outputs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="print every reply")
    args = parser.parse_args(argv)

    name, card = card_from_v2(CARD)
    persona = Persona(name=name, card=card, adapter=None)
    settings = Settings(device="cpu")
    loaded = load_base(settings)
    texts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    texts = texts[:args.prompts]
    prompts = [tuple(encode_prompt(loaded.tokenizer, build_messages(
        [ChatMessage(role="user", content=t)], persona, speaker=name))) for t in texts]
    service = LocalEngineService.over(loaded, EngineConfig(
        max_rows=len(prompts), max_context=2048, adapter_slots=1, max_lora_rank=8,
        prefill_chunk_tokens=512))
    service.start()
    openai = [SamplingParams(max_tokens=512, seed=args.seed + i) for i in range(len(prompts))]
    d = PROMPT_ONLY_DEFAULTS
    cameo = [SamplingParams(max_tokens=int(d["max_tokens"]), temperature=d["temperature"],
                            top_p=d["top_p"], repetition_penalty=d["repetition_penalty"],
                            seed=args.seed + i) for i in range(len(prompts))]
    results: dict[str, Any] = {}
    try:
        for label, params in (("openai_defaults_512", openai), ("cameo_prompt_only", cameo)):
            started = time.perf_counter()
            outputs = run(service, prompts, params)
            results[label] = {**summary(outputs), "seconds": time.perf_counter() - started}
            print(f"{label}: {results[label]}", flush=True)
            if args.show:
                for text, output in zip(texts, outputs, strict=True):
                    print(f"  {text!r} -> {output.text[:300]!r}")
    finally:
        service.close()
    print(json.dumps({"benchmark": "card_defaults", "prompts": len(prompts), "seed": args.seed,
                      "date": time.strftime("%Y-%m-%d"), "defaults": PROMPT_ONLY_DEFAULTS,
                      "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                      **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
