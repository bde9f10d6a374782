"""Where adapter files live: versioned folders `<root>/<name>/<version>/`, written atomically.

Contract: `stage()` gives a fresh temporary folder inside the store (same filesystem, so the final
rename is atomic); `commit(staged, name, version)` fsyncs the files and renames the folder into
place; `remove(name)` deletes a persona's folders. Nothing here knows what an adapter is: the
registry validates before committing, and the catalog records what was committed.

`AdapterStore` is the interface; `LocalStore` keeps files on a local or mounted filesystem (a
shared volume serves several replicas). An object-storage store implements the same methods.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

STAGING = ".staging"


class AdapterStore(Protocol):
    def stage(self) -> Path: ...
    def commit(self, staged: Path, name: str, version: int) -> Path: ...
    def path(self, name: str, version: int) -> Path: ...
    def remove(self, name: str, version: int | None = None) -> None: ...
    def versions_on_disk(self) -> dict[str, set[int]]: ...
    def discard_staged(self) -> None: ...


class LocalStore:
    """Versioned adapter folders under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / STAGING).mkdir(parents=True, exist_ok=True)

    def stage(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.root / STAGING))

    def commit(self, staged: Path, name: str, version: int) -> Path:
        for path in staged.iterdir():
            _fsync_file(path)
        target = self.path(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)  # atomic on one filesystem; fails if the version exists
        _fsync_dir(target.parent)
        return target

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def remove(self, name: str, version: int | None = None) -> None:
        target = self.root / name if version is None else self.path(name, version)
        shutil.rmtree(target, ignore_errors=True)
        if version is not None and target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()

    def versions_on_disk(self) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for folder in self.root.iterdir():
            if folder.name == STAGING or not folder.is_dir():
                continue
            found[folder.name] = {int(v.name) for v in folder.iterdir()
                                  if v.is_dir() and v.name.isdigit()}
        return found

    def discard_staged(self) -> None:
        """Remove uploads that never committed (a crash mid-upload)."""
        for leftover in (self.root / STAGING).iterdir():
            shutil.rmtree(leftover, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
