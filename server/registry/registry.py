"""The persona registry: validate, store and catalogue persona versions; reconcile at start.

Contract:
- `add(name, staged, replace, force)` takes a staged folder (adapter_config.json and
  adapter_model.safetensors, and/or persona.json), validates everything BEFORE anything becomes
  visible, moves the folder into `<root>/<name>/<version>/` atomically and commits the catalog
  row in the same write transaction. Any failure leaves the registry exactly as it was: the
  staged folder and any folder already moved are removed.
- `delete(name)` removes the catalog rows and moves the files out of sight in one transaction
  (new requests see 404 at once), then deletes the files. On a full disk it frees the store's
  reserve and tries once more, so that space can always be freed through the API.
- Writes to one name are serialized by the catalog's write lock (SQLite's, so across
  processes too): an upload and a delete never interleave.
- Version numbers are never reused (see `catalog`), so an adapter key `name@version` (built by
  `server.lora.ref.AdapterRef` only) names one upload forever and caches may trust it.
- Reads never fail on a stored row: a row whose card no longer validates is quarantined
  (logged once, listed by `quarantined()`, left out of `get` and `all`) and the rest is served.
- `open()` reconciles the catalog with the disk: a crash between the file move and the catalog
  commit leaves a folder with no row, which is removed; a row whose files are missing or damaged
  is dropped. Uploads staged but never committed are discarded.
- Listeners registered with `on_retire` hear the adapter key of every version that stops
  being current (replaced or deleted), so caches can free it once no request uses it.

One module of some 360 lines on purpose: every write path (add, delete, reconcile) follows the
same staging-then-transaction discipline, which reads best in one place.

Refusals are `RegistryError`s (`server.errors.CameoError`: a `code` and the `param` at fault,
no HTTP status); a full disk is the code `insufficient_storage`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.errors import CameoError
from server.lora.adapter import CONFIG_FILE, WEIGHTS_FILE, AdapterError, ModuleShapes, read_adapter
from server.lora.ref import AdapterRef, adapter_key
from server.registry import catalog as cat
from server.registry.catalog import Catalog, VersionRow
from server.registry.personas import (
    CARD_FILE,
    NAME_PATTERN,
    CardError,
    Persona,
    PersonaCard,
    parse_card,
    valid_name,
)
from server.registry.store import LocalStore, is_disk_full

log = logging.getLogger(__name__)

SEEDED = "seeded"
ALLOWED_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


class RegistryError(CameoError):
    """An upload, import or delete the registry refuses; nothing was changed."""

    code = "invalid_upload"


def check_name(name: str) -> None:
    if not valid_name(name):
        raise RegistryError(f"name must match {NAME_PATTERN.pattern} (got {name[:80]!r})",
                            "name", "invalid_name")


def disk_full_error(exc: BaseException, root: Path) -> RegistryError:
    return RegistryError(f"the registry's disk is full ({root}): {exc}; free space (DELETE "
                         "still works) and retry", None, "insufficient_storage")


class Registry:
    def __init__(self, root: Path, base_model_id: str, shapes: ModuleShapes, max_rank: int) -> None:
        self.store = LocalStore(root)
        self.catalog = Catalog(self.store.catalog_path)
        self.base_model_id = base_model_id
        self.shapes = shapes
        self.max_rank = max_rank
        self._listeners: list[Callable[[str], None]] = []
        self._quarantined: dict[tuple[str, int], str] = {}

    @classmethod
    def open(cls, root: Path, base_model_id: str, shapes: ModuleShapes, max_rank: int,
             seed_dir: Path | None = None) -> Registry:
        registry = cls(root, base_model_id, shapes, max_rank)
        registry.reconcile()
        if seed_dir is not None:
            registry.import_seed(seed_dir)
        return registry

    @staticmethod
    def preflight(root: Path) -> None:
        """Open and close the registry's folders and catalog, so that a registry that cannot
        work stops the start in seconds (raises OSError or CatalogError naming the path)."""
        Catalog(LocalStore(root).catalog_path).close()

    def close(self) -> None:
        self.catalog.close()

    def on_retire(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> Persona | None:
        row = self.catalog.current(name)
        return self._persona(row) if row else None

    def all(self) -> list[Persona]:
        personas = (self._persona(row) for row in self.catalog.all_current())
        return [p for p in personas if p is not None]

    def versions(self, name: str) -> list[VersionRow]:
        return self.catalog.versions(name)

    def quarantined(self) -> dict[str, str]:
        """`name@version` -> why, for stored rows that cannot be served (until deleted)."""
        self.all()  # reads every current row, quarantining what does not validate
        return {adapter_key(n, v): why for (n, v), why in sorted(self._quarantined.items())}

    def _persona(self, row: VersionRow) -> Persona | None:
        try:
            card = parse_card(row.card, row.name)
        except CardError as exc:
            if (row.name, row.version) not in self._quarantined:
                log.error("registry: quarantining %s v%d, its stored card is invalid: %s; "
                          "delete it or upload a new version", row.name, row.version, exc.message)
            self._quarantined[(row.name, row.version)] = exc.message
            return None
        adapter = (AdapterRef(row.name, row.version, self.store.path(row.name, row.version))
                   if row.kind == "adapter" else None)
        return Persona(name=row.name, card=card, adapter=adapter, version=row.version,
                       created=int(row.created))

    # ------------------------------------------------------------------ writing

    def stage(self) -> Path:
        """A fresh folder to put upload files in, on the registry's filesystem."""
        return self.store.stage()

    def add(self, name: str, staged: Path, *, replace: bool = False, force: bool = False,
            card: PersonaCard | None = None) -> VersionRow:
        """Validate the staged folder and publish it as the next version of `name`."""
        try:
            check_name(name)
            row = self._validate(name, staged, force, card)
            with self._disk_full_as_507():
                published, previous = self._publish(row, staged, replace)
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # moved away already when it committed
        if previous is not None and previous.kind == "adapter":
            self._retire(adapter_key(name, previous.version))
        log.info("registry: %s version %d published (%s)", name, published.version, row.kind)
        return published

    def delete(self, name: str) -> list[int]:
        check_name(name)
        try:
            versions = self._delete(name)
        except (OSError, sqlite3.Error) as exc:
            if not is_disk_full(exc):
                raise
            if not self.store.release_reserve():
                raise disk_full_error(exc, self.store.root) from exc
            log.warning("registry: the disk is full; deleting %s with the reserved space", name)
            with self._disk_full_as_507():
                versions = self._delete(name)
        finally:
            self.store.restore_reserve()
        log.info("registry: %s deleted (%d version(s))", name, len(versions))
        return versions

    @contextmanager
    def _disk_full_as_507(self) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            if is_disk_full(exc):
                raise disk_full_error(exc, self.store.root) from exc
            raise

    def _delete(self, name: str) -> list[int]:
        detached = None
        try:
            with self.catalog.write() as db:
                current = db.execute("SELECT current_version FROM personas WHERE name = ?",
                                     (name,)).fetchone()
                versions = cat.delete_persona(db, name)
                if not versions:
                    raise RegistryError(f"the persona {name!r} does not exist", "name",
                                        "model_not_found")
                detached = self.store.detach(name)
        except BaseException:
            if detached is not None:
                self.store.reattach(detached, name)
            raise
        self.store.purge(detached)
        for version in versions:
            self._quarantined.pop((name, version), None)
        if current is not None:
            self._retire(adapter_key(name, current[0]))
        return versions

    def _validate(self, name: str, staged: Path, force: bool,
                  card: PersonaCard | None) -> VersionRow:
        unexpected = sorted(p.name for p in staged.iterdir() if p.name not in ALLOWED_FILES)
        if unexpected:
            raise RegistryError(f"unexpected files: {', '.join(unexpected)}", "files",
                                "unexpected_files")
        if card is not None:
            card = self._checked_card(card, name)
            (staged / CARD_FILE).write_text(json.dumps(card.to_json(), ensure_ascii=False))
        card = card or self._read_card(staged, name)
        kind, rank, alpha, targets, base_model = "prompt", None, None, (), None
        if (staged / CONFIG_FILE).exists() or (staged / WEIGHTS_FILE).exists():
            weights = self._read_adapter(staged)
            if not force and weights.base_model and weights.base_model != self.base_model_id:
                raise RegistryError(
                    f"the adapter was trained for {weights.base_model!r} but this server "
                    f"runs {self.base_model_id!r}; upload with force=true to accept it",
                    "adapter_config", "base_model_mismatch")
            kind, rank, alpha = "adapter", weights.rank, weights.alpha
            targets, base_model = tuple(sorted(weights.target_modules)), weights.base_model
        elif not (staged / CARD_FILE).exists():
            raise RegistryError("an upload needs adapter files, a persona card, or both",
                                "adapter_model", "missing_files")
        return VersionRow(name=name, version=0, created=cat.now(), kind=kind, rank=rank,
                          alpha=alpha, target_modules=targets, base_model=base_model,
                          files=tuple(_describe(p) for p in sorted(staged.iterdir())),
                          card=card.to_json())

    def _read_card(self, staged: Path, name: str) -> PersonaCard:
        path = staged / CARD_FILE
        if not path.exists():
            return PersonaCard(display_name=name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(f"persona.json is not valid JSON: {exc}", "persona",
                                "invalid_json") from exc
        try:
            return parse_card(data, name)
        except CardError as exc:
            raise RegistryError(exc.message, exc.param, "invalid_card") from exc

    @staticmethod
    def _checked_card(card: PersonaCard, name: str) -> PersonaCard:
        """A card built in code (an import) passes the same check as an uploaded persona.json,
        so every stored row reads back."""
        try:
            return parse_card(card.to_json(), name)
        except CardError as exc:
            raise RegistryError(exc.message, exc.param, "invalid_card") from exc

    def _read_adapter(self, staged: Path) -> Any:
        if not (staged / CONFIG_FILE).exists():
            raise RegistryError("adapter_config.json is missing", "adapter_config",
                                "missing_files")
        try:
            return read_adapter(staged, self.shapes, self.max_rank)
        except AdapterError as exc:
            raise RegistryError(exc.message, exc.param, exc.code) from exc

    def _publish(self, row: VersionRow, staged: Path,
                 replace: bool) -> tuple[VersionRow, VersionRow | None]:
        """(the published row, the version it replaced); the files move inside the transaction."""
        moved = False
        published = row
        try:
            with self.catalog.write() as db:
                previous = None
                if cat.exists(db, row.name):
                    if not replace:
                        raise RegistryError(f"the persona {row.name!r} already exists; "
                                            "send replace=true to upload a new version", "name",
                                            "already_exists")
                    previous = cat.current_in(db, row.name)
                published = dataclasses.replace(row, version=cat.next_version(db, row.name))
                self.store.commit(staged, row.name, published.version)
                moved = True
                cat.insert_version(db, published)
        except BaseException:
            if moved:  # the rows rolled back (a failed insert or COMMIT): so do the files
                self.store.remove(row.name, published.version)
            raise
        return published, previous

    def _retire(self, key: str) -> None:
        for listener in self._listeners:
            listener(key)

    # ------------------------------------------------------------------ start-up

    def reconcile(self) -> None:
        """Make the catalog and the folders agree after any crash."""
        self.store.discard_staged()
        on_disk = self.store.versions_on_disk()
        for row in self.catalog.all_versions():
            folder = self.store.path(row.name, row.version)
            if row.version not in on_disk.get(row.name, set()) or not _intact(folder, row):
                log.warning("registry: %s v%d is missing or damaged on disk; dropping it",
                            row.name, row.version)
                with self.catalog.write() as db:
                    cat.delete_version(db, row.name, row.version)
                self.store.remove(row.name, row.version)
        known = {(r.name, r.version) for r in self.catalog.all_versions()}
        for name, versions in on_disk.items():
            for version in versions - {v for n, v in known if n == name}:
                log.warning("registry: removing %s/%d, an upload that never committed",
                            name, version)
                self.store.remove(name, version)
            self.store.drop_if_empty(name)  # a crash between a new name's mkdir and its rename

    def import_seed(self, seed_dir: Path) -> None:
        """Import the shipped persona folders once, on the registry's first start with a seed
        folder: a start that finds none (run from another folder, say) imports nothing and
        leaves the import to the next start that finds it."""
        if self.catalog.get_meta(SEEDED) is not None:
            return
        if not seed_dir.is_dir():
            log.warning("registry: no shipped personas imported: the seed folder %s is not "
                        "there (CAMEO_SEED_DIR); they will be on the first start that finds it",
                        seed_dir.resolve())
            return
        imported = []
        for folder in sorted(seed_dir.iterdir()):
            if not folder.is_dir() or not valid_name(folder.name):
                continue
            staged = self.stage()
            for file in ALLOWED_FILES:
                if (folder / file).is_file():
                    shutil.copyfile(folder / file, staged / file)
            try:
                self.add(folder.name, staged, replace=False, force=False)
                imported.append(folder.name)
            except RegistryError as exc:
                log.warning("registry: not importing %s: %s", folder, exc.message)
        self.catalog.set_meta(SEEDED, str(seed_dir))
        log.info("registry: imported %d shipped persona(s) from %s", len(imported), seed_dir)


def _describe(path: Path) -> dict[str, Any]:
    return {"name": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _intact(folder: Path, row: VersionRow) -> bool:
    for entry in row.files:
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
        if _sha256(path) != entry["sha256"]:
            return False
    return True
