"""The persona registry: validate, store and catalogue persona versions; reconcile at start.

Contract:
- `add(name, staged, replace, force)` takes a staged folder (adapter_config.json and
  adapter_model.safetensors, and/or persona.json), validates everything BEFORE anything becomes
  visible, moves the folder into `<root>/<name>/<version>/` atomically and then commits the
  catalog row. Any failure leaves the registry exactly as it was.
- `delete(name)` removes the catalog rows first (new requests see 404 at once), then the files.
- `open()` reconciles the catalog with the disk: a crash between the file move and the catalog
  commit leaves a folder with no row, which is removed; a row whose files are missing or damaged
  is dropped. Uploads staged but never committed are discarded.
- Listeners registered with `on_retire` hear the `name@version` key of every version that stops
  being current (replaced or deleted), so caches can free it once no request uses it.

Validation errors are `RegistryError`s carrying an HTTP status, `param` and `code`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.lora.adapter import CONFIG_FILE, WEIGHTS_FILE, AdapterError, ModuleShapes, read_adapter
from server.registry import catalog as cat
from server.registry.catalog import Catalog, VersionRow
from server.registry.personas import (
    CARD_FILE,
    NAME_PATTERN,
    CardError,
    Persona,
    PersonaCard,
    parse_card,
)
from server.registry.store import LocalStore

log = logging.getLogger(__name__)

SEEDED = "seeded"
ALLOWED_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


class RegistryError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise RegistryError(400, "name must match [a-z0-9][a-z0-9._-]{0,63} "
                            f"(got {name[:80]!r})", "name", "invalid_name")


class Registry:
    def __init__(self, root: Path, base_model_id: str, shapes: ModuleShapes, max_rank: int) -> None:
        self.store = LocalStore(root)
        self.catalog = Catalog(Path(root) / "catalog.sqlite3")
        self.base_model_id = base_model_id
        self.shapes = shapes
        self.max_rank = max_rank
        self._listeners: list[Callable[[str], None]] = []

    @classmethod
    def open(cls, root: Path, base_model_id: str, shapes: ModuleShapes, max_rank: int,
             seed_dir: Path | None = None) -> Registry:
        registry = cls(root, base_model_id, shapes, max_rank)
        registry.reconcile()
        if seed_dir is not None:
            registry.import_seed(seed_dir)
        return registry

    def close(self) -> None:
        self.catalog.close()

    def on_retire(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> Persona | None:
        row = self.catalog.current(name)
        return self._persona(row) if row else None

    def all(self) -> list[Persona]:
        return [self._persona(row) for row in self.catalog.all_current()]

    def versions(self, name: str) -> list[VersionRow]:
        return self.catalog.versions(name)

    def _persona(self, row: VersionRow) -> Persona:
        adapter_dir = self.store.path(row.name, row.version) if row.kind == "adapter" else None
        return Persona(name=row.name, card=parse_card(row.card, row.name),
                       adapter_dir=adapter_dir, version=row.version, created=int(row.created))

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
            previous = self._publish(row, staged, replace)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if previous is not None and previous.kind == "adapter":
            self._retire(f"{name}@{previous.version}")
        log.info("registry: %s version %d published (%s)", name, row.version, row.kind)
        return self.catalog.current(name) or row

    def delete(self, name: str) -> list[int]:
        check_name(name)
        with self.catalog.write() as db:
            current = db.execute("SELECT current_version FROM personas WHERE name = ?",
                                 (name,)).fetchone()
            versions = cat.delete_persona(db, name)
        if not versions:
            raise RegistryError(404, f"the persona {name!r} does not exist", "name",
                                "model_not_found")
        self.store.remove(name)
        if current is not None:
            self._retire(f"{name}@{current[0]}")
        log.info("registry: %s deleted (%d version(s))", name, len(versions))
        return versions

    def _validate(self, name: str, staged: Path, force: bool,
                  card: PersonaCard | None) -> VersionRow:
        unexpected = sorted(p.name for p in staged.iterdir() if p.name not in ALLOWED_FILES)
        if unexpected:
            raise RegistryError(400, f"unexpected files: {', '.join(unexpected)}", "files")
        if card is not None:
            (staged / CARD_FILE).write_text(json.dumps(card.to_json(), ensure_ascii=False))
        card = card or self._read_card(staged, name)
        kind, rank, alpha, targets, base_model = "prompt", None, None, (), None
        if (staged / CONFIG_FILE).exists() or (staged / WEIGHTS_FILE).exists():
            weights = self._read_adapter(staged)
            if not force and weights.base_model and weights.base_model != self.base_model_id:
                raise RegistryError(
                    400, f"the adapter was trained for {weights.base_model!r} but this server "
                    f"runs {self.base_model_id!r}; upload with force=true to accept it",
                    "adapter_config", "base_model_mismatch")
            kind, rank, alpha = "adapter", weights.rank, weights.alpha
            targets, base_model = tuple(sorted(weights.target_modules)), weights.base_model
        elif not (staged / CARD_FILE).exists():
            raise RegistryError(400, "an upload needs adapter files, a persona card, or both",
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
            raise RegistryError(400, f"persona.json is not valid JSON: {exc}", "persona",
                                "invalid_json") from exc
        try:
            return parse_card(data, name)
        except CardError as exc:
            raise RegistryError(400, exc.message, exc.param, "invalid_card") from exc

    def _read_adapter(self, staged: Path) -> Any:
        if not (staged / CONFIG_FILE).exists():
            raise RegistryError(400, "adapter_config.json is missing", "adapter_config",
                                "missing_files")
        try:
            return read_adapter(staged, self.shapes, self.max_rank)
        except AdapterError as exc:
            code = "invalid_json" if "JSON" in exc.message else "invalid_adapter"
            raise RegistryError(400, exc.message, exc.param, code) from exc

    def _publish(self, row: VersionRow, staged: Path, replace: bool) -> VersionRow | None:
        with self.catalog.write() as db:
            previous = None
            if cat.exists(db, row.name):
                if not replace:
                    raise RegistryError(409, f"the persona {row.name!r} already exists; send "
                                        "replace=true to upload a new version", "name",
                                        "already_exists")
                previous = cat.current_in(db, row.name)
            version = cat.next_version(db, row.name)
            published = dataclasses.replace(row, version=version)
            self.store.commit(staged, row.name, version)
            try:
                cat.insert_version(db, published)
            except BaseException:
                self.store.remove(row.name, version)
                raise
        return previous

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

    def import_seed(self, seed_dir: Path) -> None:
        """Import the shipped persona folders once, on the registry's first start."""
        if self.catalog.get_meta(SEEDED) is not None:
            return
        imported = []
        for folder in sorted(seed_dir.iterdir()) if seed_dir.is_dir() else []:
            if not folder.is_dir() or not NAME_PATTERN.match(folder.name):
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
