"""The clients' seams: `cameo train` comes in through the `cameo.commands` entry point, the
server finds the web chat without importing `clients`, and every web file is package data.
(That the clients import neither `server` nor `adapters` is an import-linter contract,
checked by tests/test_layers.py.)"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from clients.cli import build_parser
from server.api.webmount import web_dir

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"


def test_train_is_an_entry_point_command() -> None:
    (train,) = [ep for ep in entry_points(group="cameo.commands") if ep.name == "train"]
    assert train.value == "adapters.training.cli:register"
    parser, found = build_parser()
    assert "train" in found and "train a LoRA adapter" in parser.format_help()
    assert train.load()().help.startswith("train a LoRA adapter")


def test_the_server_finds_the_web_chat_without_importing_clients() -> None:
    assert web_dir() == CLIENTS / "web"
    code = ("import sys; from server.api.app import create_app; from server.api.webmount "
            "import web_dir; web_dir(); "
            "sys.exit(any(m == 'clients' or m.startswith('clients.') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr or "the server imported the clients package"


def test_every_web_file_is_package_data() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["clients"]
    files = [p.relative_to(CLIENTS).as_posix() for p in (CLIENTS / "web").rglob("*")
             if p.is_file()]
    assert {"web/index.html", "web/app.js", "web/js/api.js"} <= set(files)
    for file in files:
        assert any(fnmatch.fnmatch(file, pattern) and file.count("/") == pattern.count("/")
                   for pattern in patterns), f"clients/{file} is not shipped"
