"""Builders shared by the tests: PEFT adapters on disk, persona folders, a live uvicorn server.

Everything is made on the CPU from what the tests have: the embedded model or a tiny random
Llama, and adapters written by PEFT itself (non-zero B, so that they change the output).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import uvicorn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_peft_adapter(
    model: Any,
    folder: Path,
    *,
    seed: int,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
    use_rslora: bool = False,
    b_scale: float = 1.0,
    base_model: str | None = None,
) -> Path:
    """Write a PEFT LoRA adapter for `model` (an unquantized HF model) into `folder`.

    `targets`: module names, or a PEFT shorthand such as "all-linear". `model` is wrapped and
    unwrapped again, so it comes back unchanged.
    """
    from peft import LoraConfig, get_peft_model

    from server.lora.slots import plain_modules

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha,
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        use_rslora=use_rslora, init_lora_weights=False, lora_dropout=0.0)
    with plain_modules(model):  # PEFT wraps the base's own linears, not an engine's hooks
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(b_scale)
        if base_model is not None:
            peft_model.peft_config["default"].base_model_name_or_path = base_model
        peft_model.save_pretrained(folder)
        peft_model.unload()
    return folder


def write_persona(folder: Path, display_name: str, system_prompt: str = "", **card: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"display_name": display_name, "system_prompt": system_prompt, **card}
    (folder / "persona.json").write_text(json.dumps(data))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(app: Any, **config: Any) -> Iterator[str]:
    """Serve `app` with a real uvicorn on a free localhost port; yields the base URL. `config`:
    more `uvicorn.Config` arguments (e.g. `http="h11"` for that parser)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Collector:
    """A sink that gathers a request's outputs and signals when it has finished."""

    def __init__(self) -> None:
        self.outputs: list[Any] = []
        self.done = threading.Event()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    def __call__(self, output: Any) -> None:
        if output.token_ids and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.outputs.append(output)
        if output.finished:
            self.finished_at = time.monotonic()
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs)

    @property
    def token_ids(self) -> list[int]:
        return [t for o in self.outputs for t in o.token_ids]

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[-1].finish_reason if self.outputs else None


def run_requests(engine: Any, requests: Sequence[Any], timeout: float = 300) -> list[Collector]:
    """Submit all `requests` at once and wait until every one has finished."""
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors, strict=True):
        engine.submit(request, collector)
    for collector in collectors:
        assert collector.done.wait(timeout), "request did not finish in time"
    return collectors


def chat_prompt(tokenizer: Any, text: str, system: str | None = None) -> tuple[int, ...]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def assert_greedy_consistent(engine: Any, prompt: Sequence[int], tokens: Sequence[int],
                             adapter: Any, across_precision: bool = False,
                             require_clear: bool = True) -> int:
    """Teacher-forced check of a greedy output: every generated token is the adapter's own
    argmax given the same prefix, wherever that argmax is clear (top-2 margin above the kernel
    path's tolerance, `tests.numerics`; `across_precision` when the tokens were generated on
    another path, e.g. by merged layers). Returns how many positions were clear, and requires
    one unless `require_clear` is False (a caller checking many short replies then requires
    one over all of them: a reply of a token or two may hold only near-ties)."""
    from tests.numerics import clear_positions, logits_tolerance

    (logits,) = engine.score([(list(prompt) + list(tokens[:-1]), adapter)])
    predicted = logits[len(prompt) - 1:]  # (len(tokens), vocab)
    tolerance = logits_tolerance(engine.model, predicted, across_precision)
    clear = clear_positions(predicted, tolerance)
    assert clear.any() or not require_clear, (
        f"no position of the {len(tokens)} tokens has a top-2 margin above {tolerance:.3f}")
    got = torch.tensor(list(tokens))
    assert torch.equal(predicted.argmax(-1)[clear], got[clear])
    return int(clear.sum())


class GreedyPath:
    """An adapter's solo greedy reply with the logits along it (teacher-forced), so that another
    run's text can be checked against it after that adapter version is gone."""

    def __init__(self, engine: Any, prompt: Sequence[int], tokens: Sequence[int], text: str,
                 adapter: Any) -> None:
        (logits,) = engine.score([(list(prompt) + list(tokens[:-1]), adapter)])
        self.tokenizer = engine.tokenizer
        self.tokens = list(tokens)
        self.text = text
        self.logits = logits[len(prompt) - 1:]  # (len(tokens), vocab)
        from tests.numerics import logits_tolerance

        self.tolerance = logits_tolerance(engine.model, self.logits)

    def assert_followed_by(self, text: str) -> None:
        """`text` is this reply, or leaves it only where the path's top-2 margin is within the
        kernel path's rounding (a near-tie that another batch shape may resolve otherwise)."""
        if text == self.text:
            return
        ours = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        same = next(i for i, (a, b) in enumerate(zip([*ours, None], [*self.tokens, None],
                                                     strict=False)) if a != b)
        assert same < len(self.tokens), (text, self.text)
        top2 = self.logits[same].topk(2).values
        margin = float(top2[0] - top2[1])
        assert margin <= self.tolerance, (
            f"{text!r} left {self.text!r} at token {same}, where the greedy margin "
            f"{margin:.3g} > {self.tolerance:.3g}")


def wait_ready(url: str, process: Any = None, timeout: float = 240) -> None:
    """Poll `url`/ready until 200; fail early if `process` (a Popen) exits meanwhile."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process is None or process.poll() is None, "the server exited early"
        time.sleep(0.5)
    raise AssertionError(f"{url} was not ready within {timeout} s")
