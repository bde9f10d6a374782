"""What storing the adapters as bfloat16 or int8 codes changes in a persona's logits, next to
what quantizing the base changes.

    python -m benchmarks.bank_fidelity                  # the shipped personas, int4 base

For each persona of `--registry` (the shipped ones by default): its system prompt and example
dialogue as one chat sequence, scored teacher-forced (every position's logits, the runner's
ragged forward, eager) on the embedded model with the adapter in a slot bank stored as float32
(the reference), bfloat16 and int8 (`server.lora.int8`), all over the same `--quantization`
base (int4 by default: what a CPU serves). The yardstick is the same reference on the
unquantized base: how far the base's own quantization moves the logits. Per bank, over every
position of every persona: the largest and the mean |logit difference| from the reference, and
the share of positions whose top token is the reference's. One JSON line last.

It measures fidelity only; `benchmarks/runner_step.py --bank` and `benchmarks/lora_term.py
--bank` time the banks.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

import torch

from server.engine.runner import ForwardBatch, ModelRunner, module_shapes
from server.lora.adapter import read_adapter
from server.lora.slots import LoraSlots
from server.model.loader import LoadedModel, load_base
from server.settings import Settings

REGISTRY = Path(__file__).resolve().parent.parent / "adapters" / "registry"
BANKS = ("float32", "bfloat16", "int8")


def persona_sequences(registry: Path, tokenizer: Any) -> dict[Path, list[int]]:
    """Each persona folder's system prompt and example dialogue, chat-templated, as tokens."""
    sequences = {}
    for folder in sorted(p for p in registry.iterdir() if (p / "persona.json").exists()):
        card = json.loads((folder / "persona.json").read_text())
        examples = card.get("example_messages") or []
        if isinstance(examples, str):  # the card stores the list as its Python repr
            examples = ast.literal_eval(examples)
        messages = [{"role": "system", "content": card["system_prompt"]}, *examples]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        sequences[folder] = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return sequences


def score(loaded: LoadedModel, bank_dtype: str, sequences: dict[Path, list[int]],
          rank: int) -> list[torch.Tensor]:
    """Every position's logits (T, vocab) of each sequence with its persona's adapter in a
    bank of `bank_dtype`, eager."""
    shapes = module_shapes(loaded.model)
    bank = LoraSlots(shapes, len(sequences), rank, getattr(torch, bank_dtype), loaded.device)
    runner = ModelRunner(loaded.model, bank, 1, max(map(len, sequences.values())) + 8,
                         loaded.dtype, loaded.device)
    logits = []
    for slot, (folder, tokens) in enumerate(sequences.items(), start=1):
        bank.write(slot, read_adapter(folder, shapes, rank))
        logits.append(runner.forward(ForwardBatch([tokens], [0], [0], [slot]),
                                     all_logits=True)[0])
    return logits


def compare(got: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    """Largest and mean |difference| over every position, and the top-1 agreement."""
    diff = torch.cat([(g - r).abs().flatten() for g, r in zip(got, reference, strict=True)])
    same = torch.cat([g.argmax(-1) == r.argmax(-1) for g, r in zip(got, reference, strict=True)])
    return {"max_abs_diff": round(float(diff.max()), 4),
            "mean_abs_diff": round(float(diff.mean()), 5),
            "top1_agreement": round(float(same.float().mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=REGISTRY)
    parser.add_argument("--quantization", default="int4")
    parser.add_argument("--rank", type=int, default=32, help="the bank's largest rank")
    args = parser.parse_args(argv)
    loaded = load_base(Settings(device="cpu", quantization=args.quantization))
    sequences = persona_sequences(args.registry, loaded.tokenizer)
    if not sequences:
        parser.error(f"no persona folders in {args.registry}")
    logits = {bank: score(loaded, bank, sequences, args.rank) for bank in BANKS}
    plain = load_base(Settings(device="cpu", quantization="none"))
    unquantized = score(plain, "float32", sequences, args.rank)
    results = {bank: compare(logits[bank], logits["float32"]) for bank in BANKS[1:]}
    results["unquantized_base"] = compare(unquantized, logits["float32"])
    positions = sum(map(len, sequences.values()))
    for name, measures in results.items():
        print(f"{name:>17}: max |d logit| {measures['max_abs_diff']:.4f}, mean "
              f"{measures['mean_abs_diff']:.5f}, top-1 agreement {measures['top1_agreement']:.4f}")
    print(json.dumps({"bench": "bank_fidelity", "quantization": args.quantization,
                      "personas": [folder.name for folder in sequences], "positions": positions,
                      "reference": "float32 bank", **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
