"""Serving speed over HTTP: Cameo, with vLLM's and llama.cpp's CPU builds as peers, under chat load.

    python -m benchmarks.serve_bench peer   # Cameo vs vLLM and llama.cpp, 8 rank-16 adapters, CPU
    python -m benchmarks.serve_bench zipf   # Poisson arrivals, Zipf over 1..1000 adapters

Both suites start the servers themselves, one at a time, on this machine (nothing else should
run meanwhile), drive them with streamed `/v1/chat/completions` requests (`ignore_eos`, so
every request generates exactly `--tokens` tokens), and print a table, then a JSON line last.

`peer` (the fast-engine issue's side-by-side): the embedded SmolLM2-135M-Instruct with eight
PEFT adapters of rank 16 on all seven projections. Scenarios: every request on the base, on one
adapter, and round-robin over the eight; 16 requests at concurrency 8, in turn `--rounds` times
(1 by default; more report each scenario's median round and the mixed-over-base ratio round by
round, which a machine whose speed drifts between scenarios needs). Servers: vLLM (bf16, via
../shared/tools/vllm-cpu-peer.sh, skipped with --skip-vllm or when the script is missing),
llama.cpp's llama-server (a Q4_0 GGUF of the same model, the adapters converted to GGUF LoRAs and
chosen per request; via ../shared/tools/llamacpp-cpu-peer.sh, 8 slots; skipped with
--skip-llamacpp or when its build, converter venv or script is missing: benchmarks/llamacpp_peer.py
tells where it looks and how to set it up) and Cameo: its default (on a CPU, int4 with the
compiled decode step), int4 eager, NF4, float32 and bf16. For Cameo and
llama.cpp the eight personas are also sent one request each, one after another and all at once
(the "8 concurrent streams vs sequential" ratio), and a few base requests one at a time (the
single-stream speed). `--only` names the servers to run (Cameo configurations, `vllm`,
`llamacpp`); without it all run.

`zipf` (S-LoRA's setting): N registered adapters of rank 8 on q/k/v/o for each N of
`--registered`; requests arrive as a Poisson process at `--rate` per second and pick their
persona from a Zipf law (exponent `--zipf`) over the N. Reports throughput and TTFT /
inter-token latency percentiles per N, and each N's throughput over the 1-adapter case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from benchmarks import llamacpp_peer

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT.parent / "shared" / "tools" / "vllm-cpu-peer.sh"
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
PROMPTS = ("Tell me a story about the sea.", "What is your favourite food?",
           "Describe a rainy day in the city.", "Name three colours and why you like them.",
           "How do I bake bread?", "Write a short poem about the moon.",
           "What should I see in Paris?", "Explain how a bicycle works.")


# ---------------------------------------------------------------------------------- load


@dataclass
class Result:
    """One streamed request: when it was sent, its first and later chunks, its token count."""

    sent: float
    chunks: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


BodyFn = Callable[[str, str, int], dict[str, Any]]


def chat_body(model: str, prompt: str, tokens: int) -> dict[str, Any]:
    """The streamed, greedy chat request for `model`: exactly `tokens` tokens (`ignore_eos`)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens, "temperature": 0.0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


def llamacpp_body(lora_ids: Mapping[str, int], model: str, prompt: str,
                  tokens: int) -> dict[str, Any]:
    """`chat_body` for llama-server: `model` (a persona in `lora_ids`, or the base) becomes the
    served name plus the "lora" field that picks its adapter; prompt caching off."""
    return {**chat_body(model, prompt, tokens), **llamacpp_peer.lora_fields(model, lora_ids)}


async def stream_chat(client: httpx.AsyncClient, model: str, prompt: str, tokens: int,
                      body_fn: BodyFn = chat_body) -> Result:
    """One streamed request. One the server dropped unanswered (a kept-alive connection that it
    closed as idle just as the request went out: llama-server does after 5 s, and a starved
    client can take that long) is sent once more, its clock started anew."""
    body = body_fn(model, prompt, tokens)
    for _ in range(2):
        result = Result(sent=time.perf_counter())
        if not await _stream_into(client, body, result):
            break
    return result


async def _stream_into(client: httpx.AsyncClient, body: dict[str, Any], result: Result) -> bool:
    """Send `body`, recording into `result`; True when the server closed the connection
    before any response (`result.error` says so)."""
    answered = False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            answered = True
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return False
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    result.chunks.append(time.perf_counter())
    except httpx.RemoteProtocolError as exc:
        result.error = repr(exc)
        return not answered
    except httpx.HTTPError as exc:
        result.error = repr(exc)
    return False


async def run_closed(url: str, jobs: Sequence[tuple[str, str]], concurrency: int,
                     tokens: int, body_fn: BodyFn = chat_body) -> tuple[list[Result], float]:
    """`jobs` (model, prompt) with at most `concurrency` in flight, each request's body made by
    `body_fn`; (results, seconds)."""
    queue = list(jobs)
    results: list[Result] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def worker() -> None:
            while queue:
                model, prompt = queue.pop(0)
                results.append(await stream_chat(client, model, prompt, tokens, body_fn))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - start


async def run_poisson(url: str, jobs: Sequence[tuple[str, str]], rate: float, tokens: int,
                      seed: int) -> tuple[list[Result], float]:
    """Send `jobs` at Poisson arrival times of `rate` per second; (results, seconds)."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=None)) as client:
        start = time.perf_counter()
        tasks = []
        for model, prompt in jobs:
            tasks.append(asyncio.create_task(stream_chat(client, model, prompt, tokens)))
            await asyncio.sleep(rng.expovariate(rate))
        results = list(await asyncio.gather(*tasks))
        return results, time.perf_counter() - start


def summarize(results: list[Result], seconds: float) -> dict[str, Any]:
    failed = [r.error for r in results if r.error or not r.chunks]
    ok = [r for r in results if not r.error and r.chunks]
    tokens = sum(r.tokens for r in ok)
    ttft = sorted(r.ttft for r in ok)
    gaps = sorted(g for r in ok for g in r.gaps)
    return {"requests": len(results), "failed": len(failed), "first_error": failed[0] if failed
            else None, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "ttft_p50_s": _pct(ttft, 50), "ttft_p90_s": _pct(ttft, 90),
            "ttft_p99_s": _pct(ttft, 99), "itl_p50_s": _pct(gaps, 50), "itl_p90_s": _pct(gaps, 90),
            "itl_p99_s": _pct(gaps, 99)}


def median_rounds(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per scenario, the summary of its median round by tokens/s (the upper middle of an even
    count), with every round's tokens/s under `rounds_tokens_per_s`; and with more than one
    round, `mixed_over_base_rounds`: eight adapters over the base within each round, in order
    (each pair ran back to back, so a machine that drifts between rounds moves both)."""
    out: dict[str, Any] = {}
    for scenario, summaries in rounds.items():
        speeds = [summary["tokens_per_s"] for summary in summaries]
        median = sorted(summaries, key=lambda summary: summary["tokens_per_s"])[len(summaries) // 2]
        out[scenario] = {**median, "rounds_tokens_per_s": speeds}
    if len(rounds["base"]) > 1:
        out["mixed_over_base_rounds"] = [
            mixed["tokens_per_s"] / base["tokens_per_s"]
            for base, mixed in zip(rounds["base"], rounds["eight_adapters"], strict=True)]
    return out


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# ---------------------------------------------------------------------------------- servers


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, timeout: float, log: Path,
          process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s; see {log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def cameo_server(work: Path, seed: Path, **settings: Any) -> Iterator[tuple[str, int]]:
    """A Cameo server process on a fresh registry seeded from `seed`; yields its URL and
    process group."""
    port = _free_port()
    registry = Path(tempfile.mkdtemp(prefix="registry-", dir=work))
    env = {**os.environ, "CAMEO_PORT": str(port), "CAMEO_REGISTRY_DIR": str(registry),
           "CAMEO_SEED_DIR": str(seed), "CAMEO_LOG_LEVEL": "warning",
           **{f"CAMEO_{k.upper()}": str(v) for k, v in settings.items()}}
    log = work / f"cameo-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "server.main"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # a first start compiles the step: over ten minutes on two cores (inductor's cache
        # makes later starts quicker), so the wait is long
        _wait(f"http://127.0.0.1:{port}/ready", 1800, log, process)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        _stop(process)
        shutil.rmtree(registry, ignore_errors=True)


@contextmanager
def vllm_server(model_dir: Path, adapters: dict[str, Path]) -> Iterator[tuple[str, int]]:
    port = _free_port()
    args = [f"{name}={path}" for name, path in adapters.items()]
    started = subprocess.run(["bash", str(PEER_SCRIPT), str(model_dir), str(port), *args],
                             check=True, capture_output=True, text=True)
    pid = int(started.stdout.split()[1])
    log = Path(f"/tmp/vllm-peer-{port}.log")
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models", 900, log)
        yield f"http://127.0.0.1:{port}", pid
    finally:
        _stop_group(pid, grace=5)


@contextmanager
def llamacpp_server(paths: llamacpp_peer.Paths, base: Path,
                    adapters: Sequence[Path]) -> Iterator[tuple[str, int]]:
    """llama-server on `base` with `adapters` (ids 0, 1... in order, at scale 0), 8 slots, via
    the peer script; yields its URL and process group once /health answers and every adapter
    is listed."""
    port = _free_port()
    argv, env = llamacpp_peer.start_command(paths, base, port, adapters, slots=8)
    started = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    pid = int(started.stdout.split()[1])
    log = Path(f"/tmp/llamacpp-peer-{port}.log")
    try:
        _wait(f"http://127.0.0.1:{port}/health", 300, log)
        listed = httpx.get(f"http://127.0.0.1:{port}/lora-adapters").json()
        if len(listed) != len(adapters):
            raise RuntimeError(f"llama-server lists {len(listed)} adapters, not {len(adapters)}")
        yield f"http://127.0.0.1:{port}", pid
    finally:
        _stop_group(pid, grace=2)


def group_peak_rss_mb(group: int) -> float:
    """The peak resident memory of a server: the sum of the peaks (VmHWM) of the processes of
    its process group alive now, in MB (Linux; an upper bound of the group's peak at once)."""
    total_kb = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) != group:  # pgrp, the fifth field of stat
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def _stop_group(pid: int, grace: float) -> None:
    """SIGTERM the peer's process group, then SIGKILL it after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
        time.sleep(grace)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def greedy_texts(url: str, models: Sequence[str], tokens: int, body_fn: BodyFn) -> list[str]:
    """The greedy, unstreamed answer of each of `models` to one prompt, `tokens` tokens long."""
    texts = []
    for model in models:
        body = {**body_fn(model, PROMPTS[0], tokens), "stream": False}
        body.pop("stream_options", None)
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        answer.raise_for_status()
        texts.append(answer.json()["choices"][0]["message"]["content"])
    return texts


# ---------------------------------------------------------------------------------- adapters


def write_adapters(model_dir: Path, folder: Path, count: int, rank: int,
                   targets: Sequence[str]) -> dict[str, Path]:
    """`count` PEFT-format LoRA adapters with random weights, as persona folders `p0`, `p1`...

    The first is written by PEFT itself; the rest reuse its config and key layout with fresh
    random bfloat16 tensors (writing 1,000 through PEFT would take minutes, and in float32 the
    1,000 of rank 8 on q/k/v/o would fill 3.7 GB)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from server.model.embedded import EMBEDDED_MODEL_ID

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)  # the same p0 every run, so converted copies (llama.cpp) can be reused
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = EMBEDDED_MODEL_ID
    first = folder / "p0"
    peft_model.save_pretrained(str(first))
    template = load_file(first / "adapter_model.safetensors")
    paths = {"p0": first}
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        path = folder / f"p{index}"
        if index:
            path.mkdir(parents=True)
            shutil.copyfile(first / "adapter_config.json", path / "adapter_config.json")
            save_file({k: (torch.randn(v.shape, generator=generator) * 0.02).bfloat16()
                       for k, v in template.items()}, path / "adapter_model.safetensors")
        (path / "persona.json").write_text(json.dumps({"display_name": f"Persona {index}"}))
        paths[f"p{index}"] = path
    return paths


# ---------------------------------------------------------------------------------- suites


def peer_suite(args: argparse.Namespace, work: Path, model_dir: Path) -> dict[str, Any]:
    adapters = write_adapters(model_dir, work / "peer-adapters", 8, 16, ALL_TARGETS)
    names = list(adapters)
    jobs = {
        "base": [("{base}", PROMPTS[i % 8]) for i in range(args.requests)],
        "one_adapter": [(names[0], PROMPTS[i % 8]) for i in range(args.requests)],
        "eight_adapters": [(names[i % 8], PROMPTS[i % 8]) for i in range(args.requests)],
    }
    eight = [(names[i], PROMPTS[i]) for i in range(8)]  # one request per adapter
    single = [("{base}", PROMPTS[i]) for i in range(4)]  # base requests, one at a time
    servers: dict[str, dict[str, Any]] = {}

    def measure(url: str, group: int, base_name: str, sequential: bool,
                body_fn: BodyFn = chat_body) -> dict[str, Any]:
        out: dict[str, Any] = {}
        run = lambda js, c: asyncio.run(run_closed(  # noqa: E731
            url, [(m.format(base=base_name), p) for m, p in js], c, args.tokens, body_fn))
        run(eight, 8)  # warm-up: every adapter loaded once
        rounds: dict[str, list[dict[str, Any]]] = {scenario: [] for scenario in jobs}
        for index in range(args.rounds):  # the scenarios in turn, `--rounds` times
            for scenario, scenario_jobs in jobs.items():
                rounds[scenario].append(summarize(*run(scenario_jobs, args.concurrency)))
                label = f"{scenario} (round {index + 1})" if args.rounds > 1 else scenario
                print(f"  {label}: {_line(rounds[scenario][-1])}", flush=True)
        out.update(median_rounds(rounds))
        if sequential:
            out["eight_sequential"] = summarize(*run(eight, 1))
            out["eight_concurrent"] = summarize(*run(eight, 8))
            out["base_single"] = summarize(*run(single, 1))
            for key in ("eight_sequential", "eight_concurrent", "base_single"):
                print(f"  {key}: {_line(out[key])}", flush=True)
        out["peak_rss_mb"] = group_peak_rss_mb(group)
        print(f"  peak RSS {out['peak_rss_mb']} MB", flush=True)
        return out

    wanted = partial(_wanted, only=args.only)
    if wanted("vllm") and not args.skip_vllm and PEER_SCRIPT.exists():
        print("vLLM (CPU build, bf16) ...", flush=True)
        with vllm_server(model_dir, adapters) as (url, group):
            servers["vllm_bf16"] = measure(url, group, "base", sequential=False)
    if wanted("llamacpp") and not args.skip_llamacpp:
        servers.update(llamacpp_peer_runs(model_dir, adapters, measure))
    configs = {  # the default first (on a CPU: int4 with the compiled decode step)
        "cameo_default": {"quantization": "auto", "compile": "auto"},
        "cameo_int4_eager": {"quantization": "int4", "compile": "off"},
        "cameo_nf4": {"quantization": "nf4", "dtype": "float32", "compile": "off"},
        "cameo_float32": {"quantization": "none", "dtype": "float32", "compile": "off"},
        "cameo_bf16": {"quantization": "none", "dtype": "bfloat16", "compile": "off"}}
    for label, settings in configs.items():
        if not wanted(label):
            continue
        print(f"{label} ...", flush=True)
        with cameo_server(work, work / "peer-adapters", max_batch_size=16, adapter_slots=8,
                          max_lora_rank=16, **settings) as (url, group):
            base_name = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
            servers[label] = measure(url, group, base_name, sequential=True)
    return {"servers": servers, "ratios": _peer_ratios(servers)}


def _wanted(label: str, only: Sequence[str] | None) -> bool:
    """Whether `--only` lets the server `label` run: all run when it names none."""
    return not only or label in only


def llamacpp_peer_runs(model_dir: Path, adapters: Mapping[str, Path],
                       measure: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"llamacpp_<type>": `measure`'s results} for llama-server on GGUF copies of `model_dir`
    and `adapters`, or {} with the reason printed when llama.cpp is not set up here. Fails
    when a converted adapter leaves the greedy answer as the base's (adapters not applied)."""
    from server.settings import Settings

    paths = llamacpp_peer.paths_from_env(os.environ, Settings().cache_dir)
    reason = llamacpp_peer.missing(paths)
    if reason:
        print(reason, flush=True)
        return {}
    print(f"llama.cpp ({paths.type} GGUF, GGUF LoRAs cached in {paths.cache}) ...", flush=True)
    base, loras = llamacpp_peer.convert_all(paths, model_dir, adapters)
    body_fn = partial(llamacpp_body, {name: i for i, name in enumerate(loras)})
    with llamacpp_server(paths, base, list(loras.values())) as (url, group):
        checked = ["base", *list(loras)[:2]]
        texts = greedy_texts(url, checked, 16, body_fn)
        print(f"  greedy check: {dict(zip(checked, texts, strict=True))}", flush=True)
        if texts[0] in texts[1:]:
            raise RuntimeError(f"llama.cpp: an adapter left the base's answer unchanged: {texts}")
        return {f"llamacpp_{paths.type.lower()}": measure(url, group, "base", True, body_fn)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _best_eight(out: dict[str, Any]) -> float:
    """The better of the eight personas' throughputs: all at once, or one after another."""
    return max(out["eight_concurrent"]["tokens_per_s"], out["eight_sequential"]["tokens_per_s"])


def _peer_ratios(servers: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each Cameo run over its own base and over the peers present, the peers over their own
    base, and the median TTFT of eight personas at once (keys ending in `_ttft_p50_s`)."""
    ratios: dict[str, float | None] = {}
    vllm = servers.get("vllm_bf16")
    llama_label = next((label for label in servers if label.startswith("llamacpp")), None)
    llama = servers[llama_label] if llama_label else None
    for label, out in servers.items():
        if not label.startswith("cameo"):
            continue
        mixed = out["eight_adapters"]["tokens_per_s"]
        ratios[f"{label}_mixed_over_own_base"] = _ratio(mixed, out["base"]["tokens_per_s"])
        if "mixed_over_base_rounds" in out:
            ratios[f"{label}_mixed_over_own_base_paired_median"] = statistics.median(
                out["mixed_over_base_rounds"])
        ratios[f"{label}_concurrent_over_sequential"] = _ratio(
            out["eight_concurrent"]["tokens_per_s"], out["eight_sequential"]["tokens_per_s"])
        ratios[f"{label}_eight_concurrent_ttft_p50_s"] = out["eight_concurrent"]["ttft_p50_s"]
        if vllm:
            ratios[f"{label}_mixed_over_vllm_mixed"] = _ratio(
                mixed, vllm["eight_adapters"]["tokens_per_s"])
        if llama:
            ratios[f"{label}_eight_concurrent_over_{llama_label}_best_eight"] = _ratio(
                out["eight_concurrent"]["tokens_per_s"], _best_eight(llama))
            ratios[f"{label}_single_over_{llama_label}_single"] = _ratio(
                out["base_single"]["tokens_per_s"], llama["base_single"]["tokens_per_s"])
            ratios[f"{label}_mixed_over_{llama_label}_mixed"] = _ratio(
                mixed, llama["eight_adapters"]["tokens_per_s"])
    if vllm:
        ratios["vllm_mixed_over_own_base"] = _ratio(
            vllm["eight_adapters"]["tokens_per_s"], vllm["base"]["tokens_per_s"])
    if llama:
        ratios[f"{llama_label}_mixed_over_own_base"] = _ratio(
            llama["eight_adapters"]["tokens_per_s"], llama["base"]["tokens_per_s"])
        ratios[f"{llama_label}_concurrent_over_sequential"] = _ratio(
            llama["eight_concurrent"]["tokens_per_s"], llama["eight_sequential"]["tokens_per_s"])
        ratios[f"{llama_label}_eight_concurrent_ttft_p50_s"] = llama["eight_concurrent"]["ttft_p50_s"]
    return ratios


def zipf_suite(args: argparse.Namespace, work: Path, model_dir: Path) -> dict[str, Any]:
    most = max(args.registered)
    adapters = write_adapters(model_dir, work / "zipf-adapters", most, 8, ATTENTION)
    names = list(adapters)
    results: dict[str, Any] = {}
    for count in sorted(args.registered):
        seed = work / f"seed-{count}"
        seed.mkdir()
        for name in names[:count]:
            (seed / name).symlink_to(adapters[name])
        rng = random.Random(count)
        weights = [1 / (rank + 1) ** args.zipf for rank in range(count)]
        picks = rng.choices(names[:count], weights=weights, k=args.requests)
        jobs = [(name, PROMPTS[i % 8]) for i, name in enumerate(picks)]
        print(f"{count} registered adapter(s), {len(set(picks))} distinct in the trace ...",
              flush=True)
        with cameo_server(work, seed, max_batch_size=args.concurrency, adapter_slots=16,
                          max_lora_rank=8, host_adapters=64) as (url, _):
            asyncio.run(run_closed(url, jobs[:4], 4, args.tokens))  # warm-up
            out = summarize(*asyncio.run(run_poisson(url, jobs, args.rate, args.tokens, count)))
        out["distinct_in_trace"] = len(set(picks))
        results[str(count)] = out
        print(f"  {_line(out)}", flush=True)
    first = results[str(min(args.registered))]["tokens_per_s"]
    ratios = {f"{n}_over_{min(args.registered)}": _ratio(r["tokens_per_s"], first)
              for n, r in results.items()}
    return {"registered": results, "ratios": ratios, "rate": args.rate, "zipf": args.zipf}


def _line(summary: dict[str, Any]) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return (f"{summary['tokens_per_s']:.1f} tok/s, TTFT p50 {fmt(summary['ttft_p50_s'])} s "
            f"p90 {fmt(summary['ttft_p90_s'])} s, ITL p50 {fmt(summary['itl_p50_s'])} s, "
            f"failed {summary['failed']}" + (f" ({summary['first_error']})" if summary["failed"]
                                              else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=["peer", "zipf"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1,
                        help="peer: run base, one adapter and eight adapters in turn this many "
                        "times and report each one's median round, and eight adapters over the "
                        "base round by round (this VM's speed drifts by more than the ratio's "
                        "margin between runs: docs/BENCHMARKS.md)")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--only", nargs="*",
                        help="peer: servers to run (Cameo configurations, vllm, llamacpp)")
    parser.add_argument("--registered", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--rate", type=float, default=2.0, help="zipf: arrivals per second")
    parser.add_argument("--zipf", type=float, default=1.0, help="zipf: exponent")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    from server.model.embedded import ensure_converted
    from server.settings import Settings

    model_dir = ensure_converted(Settings().cache_dir)
    work = Path(tempfile.mkdtemp(prefix="cameo-serve-bench-"))
    try:
        suite = peer_suite if args.suite == "peer" else zipf_suite
        out = suite(args, work, model_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "serve", "suite": args.suite, "model": model_dir.name,
                      "tokens": args.tokens, "requests": args.requests,
                      "concurrency": args.concurrency,
                      "machine": f"{platform.machine()} {os.cpu_count()} cores",
                      "date": time.strftime("%Y-%m-%d"), **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
