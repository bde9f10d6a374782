"""The registry on bad days, with a real `cameo-server` process: a full disk and kill -9.

- Disk full: the registry lives on a small tmpfs mounted in the server's own mount namespace
  (`unshare`; skipped with the reason where mounting is not allowed). Uploads past the space
  answer 507 with a message and leave nothing behind; DELETE works on a completely full disk
  (the store's reserve); afterwards uploads work again and catalog, disk and API agree.
- kill -9 at random points of uploads: after each kill the next start reconciles, the persona
  committed before is intact and served, and catalog and disk agree.

Run: python -m pytest tests/robustness/test_registry_faults.py -q -m "slow or not slow"
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server.registry.catalog import Catalog
from server.registry.store import CATALOG_DIR, CATALOG_FILE, STAGING, TRASH
from tests.helpers import free_port, wait_ready
from tests.registry.conftest import upload

# About a minute or more on CI's 2-core machine: in the slow suite, which CI runs too.
pytestmark = pytest.mark.slow

TMPFS_BYTES = 12 << 20  # the embedded model's rank-8 q/v adapter is about 1.8 MB


@contextmanager
def server_process(registry: Path, log_path: Path, wrapper: Sequence[str] = ()
                   ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    command = [*wrapper, sys.executable, "-m", "server.main", "--port", str(port),
               "--registry-dir", str(registry), "--seed-dir", str(registry.parent / "no-seed"),
               "--max-context", "256", "--adapter-slots", "2", "--log-level", "warning"]
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(command, env={**os.environ, "CAMEO_DEVICE": "cpu"},
                                   stdout=log_file, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process)
            yield process, url
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=60)


def _chat(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})


def _catalog_rows(root: Path) -> dict[str, set[int]]:
    catalog = Catalog(root / CATALOG_DIR / CATALOG_FILE)
    rows: dict[str, set[int]] = {}
    for row in catalog.all_versions():
        rows.setdefault(row.name, set()).add(row.version)
    catalog.close()
    return rows


def _api_rows(url: str) -> dict[str, set[int]]:
    listed = httpx.get(f"{url}/v1/adapters", timeout=30).json()["data"]
    return {a["id"]: {v["version"] for v in a["versions"]} for a in listed}


def _assert_consistent(root: Path, rows: dict[str, set[int]]) -> dict[str, set[int]]:
    """Every catalog row has its folder and every folder its row; nothing staged is left."""
    folders = {p.name: {int(v.name) for v in p.iterdir()} for p in root.iterdir()
               if p.is_dir() and not p.name.startswith(".")}
    assert rows == folders, (rows, folders)
    assert not any((root / STAGING).iterdir()) and not any((root / TRASH).iterdir())
    return rows


# ---------------------------------------------------------------------------------- disk full

def _mount_wrapper(mountpoint: Path) -> list[str]:
    """A command prefix that runs the rest in a mount namespace with a tmpfs on `mountpoint`."""
    mount = f"mount -t tmpfs -o size={TMPFS_BYTES} tmpfs {mountpoint}"
    user = [] if os.geteuid() == 0 else ["-r"]
    probe = subprocess.run(["unshare", *user, "-m", "--propagation", "private", "sh", "-c", mount],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (unshare: {probe.stderr.strip()}); the disk-full "
                    "checks need a mount namespace")
    return ["unshare", *user, "-m", "--propagation", "private", "sh", "-c",
            f'{mount} && exec "$@"', "sh"]


def _fill(path: Path) -> None:
    """Write into `path` until the filesystem is full (what another process might do)."""
    with open(path, "ab", buffering=0) as handle:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28, exc


def test_disk_full_answers_507_and_delete_still_frees_space(
        tmp_path: Path, persona_dirs: dict[str, Path]) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    wrapper = _mount_wrapper(registry)
    with server_process(registry, tmp_path / "server.log", wrapper) as (process, url):
        seen = Path(f"/proc/{process.pid}/root") / str(registry).lstrip("/")  # the tmpfs
        responses = [upload(url, persona_dirs["alpha"], f"p{i}") for i in range(10)]
        codes = [r.status_code for r in responses]
        assert 201 in codes and 507 in codes, codes
        full = next(r for r in responses if r.status_code == 507)
        assert full.json()["error"]["code"] == "insufficient_storage"
        assert "disk is full" in full.json()["error"]["message"]
        stored = _assert_consistent(seen, _api_rows(url))
        assert _chat(url, "p0").status_code == 200  # serving goes on from what is stored

        _fill(seen / "filler")  # now not one byte is left
        assert upload(url, persona_dirs["alpha"], "more").status_code == 507
        deleted = httpx.delete(f"{url}/v1/adapters/p0", timeout=60)
        assert deleted.status_code == 200, deleted.text
        assert _chat(url, "p0").status_code == 404
        (seen / "filler").unlink()
        again = upload(url, persona_dirs["alpha"], "p0")
        assert again.status_code == 201 and again.json()["version"] == 2
        assert _chat(url, "p0").status_code == 200
        after = _assert_consistent(seen, _api_rows(url))
        assert after == {**stored, "p0": {2}}
        assert (seen / ".reserve").stat().st_size > 0  # held again for the next full disk


# ---------------------------------------------------------------------------------- kill -9

def _kill_during_uploads(process: subprocess.Popen[bytes], url: str, folder: Path,
                         delay: float) -> None:
    def uploads() -> None:
        for i in range(100):
            try:
                upload(url, folder, f"victim{i % 3}", replace=True)
            except httpx.HTTPError:
                return  # the server died under it

    thread = threading.Thread(target=uploads)
    thread.start()
    thread.join(delay)
    process.kill()
    process.wait(timeout=30)
    thread.join(60)


def _described(url: str, name: str) -> dict[str, object]:
    info = httpx.get(f"{url}/v1/adapters/{name}", timeout=30).json()
    return {key: info[key] for key in ("version", "files", "persona", "versions")}


@pytest.mark.slow
def test_kill_9_at_random_points_of_uploads_loses_nothing_committed(
        tmp_path: Path, persona_dirs: dict[str, Path]) -> None:
    registry, log_path = tmp_path / "registry", tmp_path / "server.log"
    chooser = random.Random(os.environ.get("CAMEO_FAULT_SEED", "15"))
    keeper: dict[str, object] = {}
    for kill in range(5):  # each start checks what the kill before it left, then is killed
        with server_process(registry, log_path) as (process, url):
            if kill == 0:
                assert upload(url, persona_dirs["alpha"], "keeper").status_code == 201
                keeper = _described(url, "keeper")
            else:
                rows = _assert_consistent(registry, _catalog_rows(registry))
                assert rows == _api_rows(url)
                assert rows["keeper"] == {1}
                assert _described(url, "keeper") == keeper
                for name in rows:
                    assert _chat(url, name).status_code == 200, name
            if kill < 4:
                _kill_during_uploads(process, url, persona_dirs["bravo"],
                                     chooser.uniform(0.05, 3.0))
    shutil.rmtree(registry)
