"""The SQLite catalog (WAL) of personas and their versions: the source of truth for what exists.

Contract: a version is visible only once its row is committed, and the row is committed only
after its files are in place (see `registry`). One `Catalog` per process; SQLite's own locking
makes concurrent writers (threads, or replicas sharing the folder) safe, and `next_version`
runs inside the same write transaction as the insert, so two uploads never get one number.
Version numbers are never reused, not even after the persona is deleted (`sequences` keeps the
last one handed out), so `name@version` names one upload for the life of the registry.

Opening a catalog that cannot be opened raises `CatalogError` with the path and the cause.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import CameoError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS personas (
    name TEXT PRIMARY KEY,
    current_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created REAL NOT NULL,
    kind TEXT NOT NULL,              -- 'adapter' or 'prompt' (a card on the base)
    rank INTEGER,
    alpha REAL,
    target_modules TEXT,             -- JSON list
    base_model TEXT,
    files TEXT NOT NULL,             -- JSON list of {name, size, sha256}
    card TEXT NOT NULL,              -- JSON persona card
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sequences (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL    -- kept when the persona is deleted
);
"""


class CatalogError(CameoError, RuntimeError):
    """The catalog file cannot be opened or initialised (the message names the path)."""

    code = "catalog_unavailable"


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: int
    created: float
    kind: str
    rank: int | None
    alpha: float | None
    target_modules: tuple[str, ...]
    base_model: str | None
    files: tuple[dict[str, Any], ...]
    card: dict[str, Any]


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"cannot open the registry catalog {path}: {exc} (is the folder "
                               "writable, and is the file a SQLite database?)") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue instead of failing late)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (a full disk) may leave it open
                    self._db.execute("ROLLBACK")
                raise

    def current(self, name: str) -> VersionRow | None:
        with self._lock:
            return current_in(self._db, name)

    def all_current(self) -> list[VersionRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT v.* FROM versions v JOIN personas p ON p.name = v.name "
                "AND p.current_version = v.version ORDER BY v.name").fetchall()
        return [_row(r) for r in rows]

    def versions(self, name: str) -> list[VersionRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM versions WHERE name = ? ORDER BY version",
                                    (name,)).fetchall()
        return [_row(r) for r in rows]

    def all_versions(self) -> list[VersionRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM versions").fetchall()
        return [_row(r) for r in rows]

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def current_in(db: sqlite3.Connection, name: str) -> VersionRow | None:
    """The current version of `name`, read on `db` (inside or outside a transaction)."""
    row = db.execute("SELECT v.* FROM versions v JOIN personas p ON p.name = v.name "
                     "AND p.current_version = v.version WHERE p.name = ?", (name,)).fetchone()
    return _row(row) if row else None


def next_version(db: sqlite3.Connection, name: str) -> int:
    """Hand out the next version number of `name`: above every number it ever had."""
    row = db.execute("SELECT MAX(v) FROM (SELECT MAX(version) AS v FROM versions WHERE name = ? "
                     "UNION ALL SELECT last_version FROM sequences WHERE name = ?)",
                     (name, name)).fetchone()
    version = int(row[0] or 0) + 1
    db.execute("INSERT INTO sequences VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
               "last_version = excluded.last_version", (name, version))
    return version


def insert_version(db: sqlite3.Connection, row: VersionRow) -> None:
    db.execute(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (row.name, row.version, row.created, row.kind, row.rank, row.alpha,
         json.dumps(list(row.target_modules)), row.base_model, json.dumps(list(row.files)),
         json.dumps(row.card)))
    db.execute("INSERT INTO personas VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
               "current_version = excluded.current_version", (row.name, row.version))


def exists(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM personas WHERE name = ?", (name,)).fetchone() is not None


def delete_persona(db: sqlite3.Connection, name: str) -> list[int]:
    versions = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ?", (name,))]
    db.execute("DELETE FROM versions WHERE name = ?", (name,))
    db.execute("DELETE FROM personas WHERE name = ?", (name,))
    return versions


def delete_version(db: sqlite3.Connection, name: str, version: int) -> None:
    db.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
    latest = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()[0]
    if latest is None:
        db.execute("DELETE FROM personas WHERE name = ?", (name,))
    else:
        db.execute("UPDATE personas SET current_version = ? WHERE name = ?", (latest, name))


def now() -> float:
    return time.time()


def _row(raw: tuple[Any, ...]) -> VersionRow:
    (name, version, created, kind, rank, alpha, targets, base_model, files, card) = raw
    return VersionRow(name=name, version=int(version), created=float(created), kind=kind,
                      rank=rank, alpha=alpha, target_modules=tuple(json.loads(targets or "[]")),
                      base_model=base_model, files=tuple(json.loads(files)),
                      card=json.loads(card))
