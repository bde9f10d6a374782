"""`cameo-server` as a real process: flags and environment, /health then /ready, clean SIGTERM,
and a start-up failure that exits non-zero."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from server.model.loader import LoadedModel
from tests.helpers import free_port, wait_ready


def test_cameo_server_starts_serves_and_stops(tmp_path: Path,
                                              persona_dirs: dict[str, Path]) -> None:
    seed = tmp_path / "seed"
    shutil.copytree(persona_dirs["alpha"], seed / "alpha")
    port = free_port()
    env = {**os.environ, "CAMEO_ADAPTER_SLOTS": "2", "CAMEO_DEVICE": "cpu"}
    command = [sys.executable, "-m", "server.main", "--port", str(port),
               "--registry-dir", str(tmp_path / "registry"), "--seed-dir", str(seed),
               "--max-context", "256", "--log-level", "warning"]
    log_path = tmp_path / "server.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (a file, not a pipe: a full pipe blocks the server)
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
        assert "alpha" in ids
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "alpha", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
        assert reply.status_code == 200
        # --max-context 256 reached the engine: 300 tokens more is over the context
        over = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "alpha", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 300})
        assert over.json()["error"]["code"] == "context_length_exceeded"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log_file.close()
    assert process.returncode == 0, log_path.read_text()


def test_a_base_that_cannot_be_served_stops_the_process(tmp_path: Path,
                                                       embedded: LoadedModel) -> None:
    """A GPT-2 base (no `model.layers`) is refused: a clear message, exit code 1, in seconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(
        embedded.tokenizer))).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    port = free_port()
    command = [sys.executable, "-m", "server.main", "--port", str(port), "--base-model",
               str(folder), "--registry-dir", str(tmp_path / "registry"), "--device", "cpu"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 60
    assert "base model type 'gpt2' cannot be served" in done.stderr
    assert "Families tested with Cameo" in done.stderr and "llama" in done.stderr


def _not_a_folder(root: Path) -> Path:
    (root / "file").write_text("not a folder")
    return root / "file" / "registry"


def _catalog_is_a_folder(root: Path) -> Path:
    (root / "registry" / ".catalog" / "catalog.sqlite3").mkdir(parents=True)
    return root / "registry"


def _catalog_is_not_sqlite(root: Path) -> Path:
    (root / "registry" / ".catalog").mkdir(parents=True)
    (root / "registry" / ".catalog" / "catalog.sqlite3").write_bytes(b"\x00garbage" * 512)
    return root / "registry"


def _read_only(root: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the other broken registries cover it")
    (root / "registry").mkdir()
    (root / "registry").chmod(0o500)
    return root / "registry"


@pytest.mark.parametrize("broken", [_not_a_folder, _catalog_is_a_folder, _catalog_is_not_sqlite,
                                    _read_only], ids=lambda f: f.__name__.strip("_"))
def test_a_registry_that_cannot_work_stops_the_process_in_seconds(
        tmp_path: Path, broken: Callable[[Path], Path]) -> None:
    """Exit code 1 with the cause and the path, before the model loads: a supervisor restarts
    it and someone is told, instead of a process answering 503 forever."""
    registry = broken(tmp_path)
    command = [sys.executable, "-m", "server.main", "--port", str(free_port()),
               "--registry-dir", str(registry), "--device", "cpu"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30, "it waited for the model before failing"
    assert "start-up failed" in done.stderr and str(registry) in done.stderr, done.stderr
