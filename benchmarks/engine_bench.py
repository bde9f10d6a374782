"""Engine decode speed: base alone, one adapter, many distinct adapters, and PEFT's own path.

All in one run, on one machine, reported as ratios. CPU mode uses the embedded model in NF4
(what `make serve` runs); the GPU mode with 8B shapes belongs to the fast-engine work and is
not implemented here yet.

    python -m benchmarks.engine_bench --batch 1 8 16 --tokens 32 --adapters 8

For each batch size B: decode tokens/s and ms per step of the Cameo engine with every row on
the base, every row on one adapter, and rows spread over `--adapters` distinct adapters; then
PEFT's `generate(adapter_names=...)` with the same mix on the same NF4 base. Prints a table,
then a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from server.engine.engine import Engine, EngineConfig
from server.engine.types import AdapterRef, GenerationRequest, SamplingParams
from server.model.loader import LoadedModel, load_base
from server.settings import Settings

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(plain: LoadedModel, count: int, rank: int, folder: Path) -> list[Path]:
    """`count` PEFT adapters with random non-zero weights (speed does not depend on values)."""
    from peft import LoraConfig, get_peft_model

    paths = []
    for index in range(count):
        torch.manual_seed(index)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                            init_lora_weights=False)
        peft_model = get_peft_model(plain.model, config)
        peft_model.peft_config["default"].base_model_name_or_path = plain.model_id
        peft_model.save_pretrained(folder / f"a{index}")
        peft_model.unload()
        paths.append(folder / f"a{index}")
    return paths


def engine_decode(engine: Engine, prompt: tuple[int, ...], refs: list[AdapterRef | None],
                  tokens: int) -> float:
    """Decode tokens/s of len(refs) rows generating `tokens` each (prefill excluded)."""
    import threading

    done = threading.Event()
    first_token: list[float] = []
    remaining = [len(refs)]

    def sink(output: Any) -> None:
        if output.token_ids and not first_token:
            first_token.append(time.perf_counter())
        if output.finished:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    sampling = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for index, ref in enumerate(refs):
        engine.submit(GenerationRequest(f"bench-{time.time_ns()}-{index}", prompt, sampling, ref),
                      sink)
    done.wait()
    elapsed = time.perf_counter() - first_token[0]
    return len(refs) * (tokens - 1) / elapsed


def peft_decode(base: LoadedModel, adapters: list[Path], prompt: tuple[int, ...], batch: int,
                tokens: int) -> float:
    """PEFT's mixed-adapter generate on the same NF4 base: decode tokens/s."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base.model, adapters[0], adapter_name="a0")
    for index, path in enumerate(adapters[1:], start=1):
        model.load_adapter(path, adapter_name=f"a{index}")
    names = [f"a{i % len(adapters)}" for i in range(batch)]
    ids = torch.tensor([list(prompt)] * batch)
    kwargs = dict(do_sample=False, pad_token_id=0, adapter_names=names)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)  # prefill-only time
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        elapsed = time.perf_counter() - start - prefill
    model.unload()
    return batch * (tokens - 1) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--skip-peft", action="store_true")
    args = parser.parse_args(argv)

    settings = Settings(device="cpu", max_batch_size=max(args.batch), max_context=256,
                        adapter_slots=args.adapters, max_lora_rank=args.rank)
    print("loading the embedded model (NF4) ...", flush=True)
    base = load_base(settings)
    plain = load_base(settings.model_copy(update={"quantization": "none"}))
    work = Path(tempfile.mkdtemp(prefix="cameo-bench-"))
    adapters = make_adapters(plain, args.adapters, args.rank, work)
    del plain
    engine = Engine(base, EngineConfig(max_rows=max(args.batch), max_context=256,
                                       adapter_slots=args.adapters, max_lora_rank=args.rank,
                                       prefill_chunk_tokens=256))
    engine.start()
    prompt = tuple(base.tokenizer("Tell me a story about the sea.")["input_ids"])
    refs = [AdapterRef(f"a{i}@1", path) for i, path in enumerate(adapters)]
    engine_decode(engine, prompt, refs, 2)  # warm-up: loads every adapter into its slot

    results: dict[str, Any] = {}
    for batch in args.batch:
        row: dict[str, float] = {}
        row["base"] = engine_decode(engine, prompt, [None] * batch, args.tokens)
        row["one_adapter"] = engine_decode(engine, prompt, [refs[0]] * batch, args.tokens)
        mixed = [refs[i % len(refs)] for i in range(batch)]
        row["distinct_adapters"] = engine_decode(engine, prompt, mixed, args.tokens)
        if not args.skip_peft:
            row["peft_adapter_names"] = peft_decode(base, adapters, prompt, batch, args.tokens)
        row["mixed_over_base"] = row["distinct_adapters"] / row["base"]
        if "peft_adapter_names" in row:
            row["mixed_over_peft"] = row["distinct_adapters"] / row["peft_adapter_names"]
        results[str(batch)] = row
        print(f"batch {batch:3d}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
              flush=True)
    engine.stop()
    print(json.dumps({
        "bench": "engine", "device": "cpu", "model": base.model_id, "quantization": "nf4",
        "adapters": args.adapters, "rank": args.rank, "tokens": args.tokens,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "tokens_per_s": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
