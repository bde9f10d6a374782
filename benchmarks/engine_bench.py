"""Engine speed in one run: base alone, one adapter, many distinct adapters, merged, and PEFT.

    python -m benchmarks.engine_bench                       # the defaults below, on the CPU
    python -m benchmarks.engine_bench --batch 1 16 --distinct 8 --tokens 16 --skip-peft

The engine runs alone (no HTTP) on the embedded model (what `make serve` runs), in NF4, int4 or
unquantized (`--quantization`), its decode step eager or compiled (`--compile`). For each batch
size B it measures decode tokens/s and ms per step, prefill excluded, with every row on the
base; every row on one adapter; rows spread over N distinct adapters (each N of `--distinct` up
to B); every row on one adapter merged into the base (dense merge, see server/lora/merge.py);
and PEFT's own `generate(adapter_names=...)` on the same base with one adapter and with each N
mix: the baseline. Then: time to first token of a prompt of each `--prompt-lengths` length on an
idle engine, alone and with one such prompt per adapter (up to eight) submitted at once (the
median and the last), adapter load times (disk to host, host to slot), merge and unmerge times, and peak
memory. Prints a table, then one JSON line last.

The GPU mode with 8B shapes belongs to the fast-engine issue and is not implemented: no GPU
was available to build or check it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from server.composition import in_passing_thread
from server.engine.engine import EngineConfig
from server.engine.step import should_compile
from server.engine.types import AdapterRef, GenerationRequest, RequestOutput, SamplingParams
from server.lora.adapter import read_adapter
from server.lora.slots import plain_modules
from server.model.loader import LoadedModel, load_base
from server.model.nf4 import standard_layout
from server.model.weight_only import with_peft_layers
from server.service.local import LocalEngineService
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


class _Run:
    """Submits requests to the engine and records when tokens arrive."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.done = threading.Event()
        self.first: float | None = None
        self.last_first: float | None = None  # when the last row got its first token
        self.errors: list[str] = []
        self._seen: set[str] = set()

    def __call__(self, output: RequestOutput) -> None:
        now = time.perf_counter()
        if output.token_ids and output.request_id not in self._seen:
            self._seen.add(output.request_id)
            self.first = self.first or now
            self.last_first = now
        if output.error:
            self.errors.append(output.error)
        if output.finished:
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()


def engine_decode(engine: LocalEngineService, prompt: tuple[int, ...], refs: list[AdapterRef | None],
                  tokens: int) -> float:
    """Decode tokens/s of len(refs) rows generating `tokens` each, from the moment every row
    has its first token (so prefill is excluded) to the end."""
    run = _Run(len(refs))
    sampling = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for index, ref in enumerate(refs):
        engine.submit(GenerationRequest(f"b{time.time_ns()}-{index}", prompt, sampling, ref), run)
    run.done.wait()
    if run.errors:
        raise RuntimeError(run.errors[0])
    assert run.last_first is not None
    return len(refs) * (tokens - 1) / (time.perf_counter() - run.last_first)


def time_to_first_token(engine: LocalEngineService, length: int, ref: AdapterRef | None) -> float:
    """Seconds from submit to the first token of one `length`-token prompt on an idle engine."""
    prompt = tuple(int(t) for t in torch.randint(100, 10000, (length,)))
    run = _Run(1)
    start = time.perf_counter()
    engine.submit(GenerationRequest(f"ttft{time.time_ns()}", prompt,
                                    SamplingParams(max_tokens=1, temperature=0.0), ref), run)
    run.done.wait()
    assert run.first is not None
    return run.first - start


def peft_decode(base: LoadedModel, adapters: list[Path], prompt: tuple[int, ...], batch: int,
                tokens: int) -> float:
    """PEFT's mixed-adapter generate on the same base: decode tokens/s (prefill subtracted)."""
    from peft import LoraConfig, PeftModel

    # PEFT wraps the base's own linears (not the engine's slot hooks); it loads adapters through
    # state_dict(), which must see the standard NF4 layout (bitsandbytes 0.50 corrupts a
    # repacked one there), and then generates on whatever kernel path the base has.
    with plain_modules(base.model):
        with standard_layout(base.model):
            config = with_peft_layers(LoraConfig.from_pretrained(adapters[0]))  # int4 layers
            model = PeftModel.from_pretrained(base.model, adapters[0], adapter_name="a0",
                                              config=config)
            for index, path in enumerate(adapters[1:], start=1):
                model.load_adapter(path, adapter_name=f"a{index}")
        try:
            return _peft_generate(model, prompt, batch, tokens, len(adapters))
        finally:
            model.unload()


def _peft_generate(model: Any, prompt: tuple[int, ...], batch: int, tokens: int,
                   adapters: int) -> float:
    names = [f"a{i % adapters}" for i in range(batch)]
    ids = torch.tensor([list(prompt)] * batch)
    kwargs: dict[str, Any] = dict(do_sample=False, pad_token_id=0, adapter_names=names)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)  # warm-up
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        elapsed = time.perf_counter() - start - prefill
    return batch * (tokens - 1) / elapsed


def burst_ttft(engine: LocalEngineService, length: int, refs: list[AdapterRef]) -> dict[str, float]:
    """Seconds from submitting one `length`-token prompt per adapter of `refs`, all at once on an
    idle engine, to each one's first token: the median and the last."""
    prompts = [tuple(int(t) for t in torch.randint(100, 10000, (length,))) for _ in refs]
    run = _Run(len(refs))
    firsts: dict[str, float] = {}

    def sink(output: RequestOutput) -> None:
        if output.token_ids:
            firsts.setdefault(output.request_id, time.perf_counter())
        run(output)

    start = time.perf_counter()
    for index, (prompt, ref) in enumerate(zip(prompts, refs, strict=True)):
        engine.submit(GenerationRequest(f"burst{time.time_ns()}-{index}", prompt,
                                        SamplingParams(max_tokens=2, temperature=0.0), ref), sink)
    run.done.wait()
    waits = sorted(first - start for first in firsts.values())
    return {"p50_s": waits[(len(waits) - 1) // 2], "last_s": waits[-1]}


def load_times(engine: LocalEngineService, path: Path, repeats: int = 5) -> dict[str, float]:
    """Milliseconds to read an adapter from disk to host memory, and to copy it into a slot."""
    disk: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        weights = read_adapter(path, engine.shapes, engine.max_lora_rank)
        disk.append(time.perf_counter() - start)
    bank = engine.engine.slots.bank
    spare = bank.num_slots - 1  # the benchmark keeps the last slot out of the LRU's way

    def write() -> float:
        start = time.perf_counter()
        bank.write(spare, weights)
        elapsed = time.perf_counter() - start
        bank.clear(spare)
        return elapsed

    host = [engine.worker.call(write).result() for _ in range(repeats)]
    return {"disk_to_host_ms": 1000 * min(disk), "host_to_slot_ms": 1000 * min(host),
            "disk_to_slot_ms": 1000 * (min(disk) + min(host))}


def bench_batch(engine: LocalEngineService, base: LoadedModel, adapters: list[Path], refs: list[AdapterRef],
                prompt: tuple[int, ...], batch: int, args: argparse.Namespace) -> dict[str, float]:
    row: dict[str, float] = {}
    row["base"] = engine_decode(engine, prompt, [None] * batch, args.tokens)
    row["one_adapter"] = engine_decode(engine, prompt, [refs[0]] * batch, args.tokens)
    mixes = [n for n in args.distinct if 1 < n <= batch]
    for count in mixes:
        mixed = [refs[i % count] for i in range(batch)]
        row[f"distinct_{count}"] = engine_decode(engine, prompt, mixed, args.tokens)
    weights = engine.weights(refs[0])
    assert engine.worker.call(lambda: engine.engine.merge(refs[0], weights)).result() is True
    row["merged"] = engine_decode(engine, prompt, [refs[0]] * batch, args.tokens)
    engine.worker.call(lambda: engine.engine.unmerge(refs[0].key)).result()
    if not args.skip_peft:
        for count in [1, *mixes]:
            row[f"peft_{count}"] = in_passing_thread(
                partial(peft_decode, base, adapters[:count], prompt, batch, args.tokens))
    row["one_over_base"] = row["one_adapter"] / row["base"]
    row["merged_over_base"] = row["merged"] / row["base"]
    if not args.skip_peft:
        row["one_over_peft"] = row["one_adapter"] / row["peft_1"]
    if mixes:
        widest = max(mixes)
        row["mixed_over_base"] = row[f"distinct_{widest}"] / row["base"]
        if not args.skip_peft:
            row["mixed_over_peft"] = row[f"distinct_{widest}"] / row[f"peft_{widest}"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--distinct", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--quantization", choices=["int4", "nf4", "none"], default="int4")
    parser.add_argument("--skip-peft", action="store_true")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                        help="compile the decode step (CAMEO_COMPILE; compiled at set-up)")
    args = parser.parse_args(argv)

    adapters_needed = max(args.distinct)
    context = max(args.prompt_lengths) + args.tokens + 16
    settings = Settings(device="cpu", quantization=args.quantization, max_context=context)

    def set_up() -> tuple[LoadedModel, list[Path], LocalEngineService]:
        print(f"loading the embedded model ({args.quantization}) ...", flush=True)
        base = load_base(settings)
        plain = load_base(settings.model_copy(update={"quantization": "none"}))
        work = Path(tempfile.mkdtemp(prefix="cameo-bench-"))
        print(f"writing {adapters_needed} rank-{args.rank} adapters to {work} ...", flush=True)
        adapters = make_adapters(plain, adapters_needed, args.rank, work)
        engine = LocalEngineService.over(base, EngineConfig(
            max_rows=max(args.batch), max_context=context, adapter_slots=adapters_needed + 1,
            max_lora_rank=args.rank, prefill_chunk_tokens=256,
            compile=should_compile(args.compile, base.device, base.quantization)),
            host_adapters=adapters_needed)
        return base, adapters, engine

    # torch work outside the engine thread runs on threads that end, as in the server
    # (server.composition explains why)
    base, adapters, engine = in_passing_thread(set_up)
    engine.start()
    prompt = tuple(base.tokenizer("Tell me a story about the sea.")["input_ids"])
    refs = [AdapterRef(f"a{i}", 1, path) for i, path in enumerate(adapters)]
    engine_decode(engine, prompt, refs, 2)  # warm-up: every adapter into its slot

    results: dict[str, Any] = {}
    for batch in args.batch:
        row = bench_batch(engine, base, adapters, refs, prompt, batch, args)
        results[str(batch)] = row
        print(f"batch {batch:3d}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
              flush=True)
    ttft = {str(n): {"base_s": time_to_first_token(engine, n, None),
                     "adapter_s": time_to_first_token(engine, n, refs[0])}
            for n in args.prompt_lengths}
    print(f"time to first token: {ttft}", flush=True)
    burst = {str(n): burst_ttft(engine, n, refs[:8]) for n in args.prompt_lengths}
    print(f"time to first token, {len(refs[:8])} adapters' prompts at once: {burst}", flush=True)
    loads = load_times(engine, adapters[0])
    print(f"adapter load: {loads}", flush=True)
    merge = engine.engine.stats.merge
    engine.close()
    step_ms = {b: {k: 1000 * int(b) / v for k, v in row.items() if "_over_" not in k}
               for b, row in results.items()}
    print(json.dumps({
        "bench": "engine", "device": "cpu", "model": base.model_id,
        "quantization": args.quantization, "dtype": str(base.dtype).removeprefix("torch."),
        "compile": args.compile, "rank": args.rank, "tokens": args.tokens,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "decode_tokens_per_s": results, "ms_per_step": step_ms, "ttft": ttft,
        "ttft_burst": burst,
        "adapter_load": loads, "merge_s": merge.last_merge_seconds,
        "unmerge_s": merge.last_unmerge_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
