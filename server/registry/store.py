"""Where adapter files live: versioned folders `<root>/<name>/<version>/`, written atomically.

Layout of a registry folder. Everything that is not a persona folder starts with a dot, which
no persona name can, so no name (say `catalog.sqlite3-journal`) collides with SQLite's files:

    <root>/<name>/<version>/              committed versions
    <root>/.catalog/catalog.sqlite3[-wal]  the catalog (see `catalog`)
    <root>/.staging/                      uploads being received
    <root>/.trash/                        folders being deleted
    <root>/.reserve                       a few MiB held back so that DELETE works on a full disk

A catalog from before `.catalog/` (`<root>/catalog.sqlite3`) is moved there on open, its WAL
first, so a crash halfway through is finished by the next open.

Contract: `stage()` gives a fresh temporary folder inside the store (same filesystem, so the
final rename is atomic); `commit(staged, name, version)` fsyncs the files and renames the folder
into place; `detach(name)` moves a persona's folders out of sight in one rename (`reattach` undoes
it, `purge` deletes them). The registry calls `commit` and `detach` inside the catalog's write
transaction, so a name's files and rows change together. Nothing here knows what an adapter is.

`AdapterStore` is the interface; `LocalStore` keeps files on a local or mounted filesystem (a
shared volume serves several replicas). An object-storage store implements the same methods.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

CATALOG_DIR, CATALOG_FILE = ".catalog", "catalog.sqlite3"
STAGING = ".staging"
TRASH = ".trash"
RESERVE = ".reserve"
RESERVE_BYTES = 4 << 20
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class AdapterStore(Protocol):
    def stage(self) -> Path: ...
    def commit(self, staged: Path, name: str, version: int) -> Path: ...
    def path(self, name: str, version: int) -> Path: ...
    def remove(self, name: str, version: int) -> None: ...
    def drop_if_empty(self, name: str) -> None: ...
    def detach(self, name: str) -> Path | None: ...
    def reattach(self, detached: Path, name: str) -> None: ...
    def purge(self, detached: Path | None) -> None: ...
    def versions_on_disk(self) -> dict[str, set[int]]: ...
    def discard_staged(self) -> None: ...
    def release_reserve(self) -> bool: ...
    def restore_reserve(self) -> None: ...


class LocalStore:
    """Versioned adapter folders under `root`."""

    def __init__(self, root: Path, reserve_bytes: int = RESERVE_BYTES) -> None:
        self.root = Path(root)
        self.reserve_bytes = reserve_bytes
        for folder in (CATALOG_DIR, STAGING, TRASH):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._move_legacy_catalog()
        self.restore_reserve()

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_DIR / CATALOG_FILE

    # ------------------------------------------------------------------ writing

    def stage(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self.root / STAGING))

    def commit(self, staged: Path, name: str, version: int) -> Path:
        for path in staged.iterdir():
            _fsync_file(path)
        target = self.path(name, version)
        if target.exists():
            # Only an upload whose catalog commit failed leaves a folder for a version with no
            # row; the caller holds the catalog's write lock, so nothing else can be using it.
            log.warning("registry: replacing %s, left by an upload that never committed", target)
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)  # atomic on one filesystem
        _fsync_dir(target.parent)
        return target

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def remove(self, name: str, version: int) -> None:
        shutil.rmtree(self.path(name, version), ignore_errors=True)
        self.drop_if_empty(name)

    def drop_if_empty(self, name: str) -> None:
        """Remove `name`'s folder when it holds nothing (after its last version goes, or left
        by a crash between `commit`'s mkdir and its rename)."""
        folder = self.root / name
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def detach(self, name: str) -> Path | None:
        """Move all of `name`'s folders out of sight in one rename; None if it has none."""
        source = self.root / name
        if not source.exists():
            return None
        detached = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root / TRASH))
        os.rename(source, detached / name)
        return detached

    def reattach(self, detached: Path, name: str) -> None:
        os.rename(detached / name, self.root / name)
        shutil.rmtree(detached, ignore_errors=True)

    def purge(self, detached: Path | None) -> None:
        if detached is not None:
            shutil.rmtree(detached, ignore_errors=True)

    # ------------------------------------------------------------------ a full disk

    def release_reserve(self) -> bool:
        """Free the reserved bytes (to let a DELETE through on a full disk); False if none."""
        try:
            os.remove(self.root / RESERVE)
        except FileNotFoundError:
            return False
        return True

    def restore_reserve(self) -> None:
        """Hold the reserve again if there is room; a full disk just leaves it missing."""
        path = self.root / RESERVE
        if self.reserve_bytes <= 0 or (path.exists() and path.stat().st_size >= self.reserve_bytes):
            return
        try:
            with open(path, "wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, self.reserve_bytes)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if exc.errno not in DISK_FULL_ERRNOS and exc.errno not in (errno.EOPNOTSUPP,
                                                                       errno.EINVAL):
                raise

    # ------------------------------------------------------------------ start-up

    def versions_on_disk(self) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for folder in self.root.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                found[folder.name] = {int(v.name) for v in folder.iterdir()
                                      if v.is_dir() and v.name.isdigit()}
        return found

    def discard_staged(self) -> None:
        """Remove uploads that never committed and deletes that never finished (a crash)."""
        for parent in (self.root / STAGING, self.root / TRASH):
            for leftover in parent.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)

    def _move_legacy_catalog(self) -> None:
        legacy = self.root / CATALOG_FILE
        if not legacy.is_file():
            return
        log.info("registry: moving the catalog %s into %s/", legacy, CATALOG_DIR)
        for suffix in ("-wal", "-shm", ""):  # the database last: a crash leaves it to move again
            source = self.root / (CATALOG_FILE + suffix)
            if source.is_file():
                os.rename(source, self.root / CATALOG_DIR / source.name)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the filesystem (or the user's quota) is full, from the OS or SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    return "database or disk is full" in str(exc)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
