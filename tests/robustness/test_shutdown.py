"""SIGTERM during streams: running streams complete, new requests get 503, the process exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port, wait_ready


def _stream(url: str, out: dict[str, Any]) -> None:
    body = {"model": "alpha", "stream": True, "max_tokens": 40, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell me a story."}]}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        out["status"] = resp.status_code
        lines = []
        for line in resp.iter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                out["started"] = True
        out["lines"] = lines


@pytest.mark.slow
def test_sigterm_drains_streams_and_exits_zero(tmp_path: Path,
                                              persona_dirs: dict[str, Path]) -> None:
    seed = tmp_path / "seed"
    shutil.copytree(persona_dirs["alpha"], seed / "alpha")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (a file, not a pipe: a full pipe blocks the server)
    process = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--port", str(port), "--registry-dir",
         str(tmp_path / "registry"), "--seed-dir", str(seed), "--max-context", "256",
         "--drain-timeout", "60", "--json-logs", "--log-level", "info"],
        env={**os.environ, "CAMEO_DEVICE": "cpu"}, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, process)
        streams = [{} for _ in range(2)]
        threads = [threading.Thread(target=_stream, args=(url, out)) for out in streams]
        for thread in threads:
            thread.start()
        while not all(out.get("started") for out in streams):
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 503
        refused = httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
            "model": "alpha", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        for thread in threads:
            thread.join(120)
        for out in streams:
            assert out["status"] == 200 and out["lines"][-1] == "[DONE]"
            chunks = [json.loads(line) for line in out["lines"][:-1]]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        log_file.close()
    output = log_path.read_text()
    assert process.returncode == 0, output
    log_lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any("draining" in entry["message"] for entry in log_lines)
    assert any(entry.get("request_id") for entry in log_lines)  # structured access log lines
