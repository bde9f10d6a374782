"""The layer rules of docs/ARCHITECTURE.md hold (import-linter's contracts in pyproject.toml),
and the contracts do catch an import against them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_every_layer_contract_is_kept() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    for part in ("server", "clients", "adapters"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    lora = copy / "server" / "lora" / "manager.py"
    lora.write_text(lora.read_text() + "\nfrom server.api import errors  # noqa: E402\n")
    result = lint(copy)
    assert result.returncode != 0
    assert "server.lora.manager -> server.api.errors" in result.stdout
