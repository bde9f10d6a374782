"""A crash between the file move and the catalog commit leaves the previous state after restart.

The crash is real: a child process runs the registry's upload and is killed (os._exit, no
cleanup) at the exact point between publishing the folder and inserting the catalog row.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from server.engine.runner import module_shapes
from server.model.loader import LoadedModel
from server.registry.registry import Registry
from server.registry.store import LocalStore

CHILD = textwrap.dedent("""
    import json, os, shutil, sys
    from pathlib import Path
    from server.registry import catalog
    from server.registry.registry import Registry

    root, source, shapes_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    shapes = {k: tuple(v) for k, v in json.loads(shapes_file.read_text()).items()}
    registry = Registry.open(root, "HuggingFaceTB/SmolLM2-135M-Instruct", shapes, 64)

    def crash(db, row):
        os._exit(17)  # the folder is in place, the row is not committed: die right here

    catalog.insert_version = crash
    staged = registry.stage()
    for f in source.iterdir():
        if f.suffix in (".json", ".safetensors"):
            shutil.copyfile(f, staged / f.name)
    registry.add("keeper", staged, replace=True)
""")


def _copy_adapter(source: Path, staged: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors", "persona.json"):
        (staged / name).write_bytes((source / name).read_bytes())


def test_crash_before_catalog_commit_leaves_previous_state(
        tmp_path: Path, embedded: LoadedModel, extra_adapters: dict[str, Path]) -> None:
    import json

    root = tmp_path / "registry"
    shapes = module_shapes(embedded.model)
    registry = Registry.open(root, embedded.model_id, shapes, 64)
    staged = registry.stage()
    _copy_adapter(extra_adapters["alpha"], staged)
    registry.add("keeper", staged)
    before = [(r.name, r.version, r.files) for r in registry.catalog.all_versions()]
    registry.close()

    shapes_file = tmp_path / "shapes.json"
    shapes_file.write_text(json.dumps(shapes))
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(extra_adapters["bravo"]),
                            str(shapes_file)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 17, child.stderr
    assert (root / "keeper" / "2").is_dir()  # the crash left the new folder behind ...

    reopened = Registry.open(root, embedded.model_id, shapes, 64)  # ... the restart removes it
    try:
        assert [(r.name, r.version, r.files) for r in reopened.catalog.all_versions()] == before
        assert LocalStore(root).versions_on_disk() == {"keeper": {1}}
        persona = reopened.get("keeper")
        assert persona is not None and persona.version == 1
        assert persona.adapter is not None
        assert (persona.adapter.path / "adapter_model.safetensors").read_bytes() == (
            extra_adapters["alpha"] / "adapter_model.safetensors").read_bytes()
    finally:
        reopened.close()


def test_an_empty_persona_folder_left_by_a_crash_is_removed_at_start(
        tmp_path: Path, embedded: LoadedModel, extra_adapters: dict[str, Path]) -> None:
    # kill -9 between `LocalStore.commit`'s mkdir of a new name and its rename leaves this
    shapes = module_shapes(embedded.model)
    registry = Registry.open(tmp_path, embedded.model_id, shapes, 64)
    staged = registry.stage()
    _copy_adapter(extra_adapters["alpha"], staged)
    registry.add("keeper", staged)
    registry.close()
    (tmp_path / "victim").mkdir()
    reopened = Registry.open(tmp_path, embedded.model_id, shapes, 64)
    try:
        assert LocalStore(tmp_path).versions_on_disk() == {"keeper": {1}}
        assert [p.name for p in reopened.all()] == ["keeper"]
    finally:
        reopened.close()


def test_damaged_version_is_dropped_at_start(tmp_path: Path, embedded: LoadedModel,
                                             extra_adapters: dict[str, Path]) -> None:
    shapes = module_shapes(embedded.model)
    registry = Registry.open(tmp_path, embedded.model_id, shapes, 64)
    for folder in (extra_adapters["alpha"], extra_adapters["bravo"]):
        staged = registry.stage()
        _copy_adapter(folder, staged)
        registry.add("two", staged, replace=True)
    registry.close()
    damaged = tmp_path / "two" / "2" / "adapter_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    reopened = Registry.open(tmp_path, embedded.model_id, shapes, 64)
    try:
        current = reopened.get("two")
        assert current is not None and current.version == 1
        assert not (tmp_path / "two" / "2").exists()
    finally:
        reopened.close()


def test_shipped_personas_are_imported_once(tmp_path: Path, embedded: LoadedModel,
                                            persona_dirs: dict[str, Path]) -> None:
    shapes = module_shapes(embedded.model)
    seed = next(iter(persona_dirs.values())).parent
    registry = Registry.open(tmp_path, embedded.model_id, shapes, 64, seed_dir=seed)
    assert sorted(p.name for p in registry.all()) == sorted(persona_dirs)
    registry.delete("alpha")
    registry.close()
    again = Registry.open(tmp_path, embedded.model_id, shapes, 64, seed_dir=seed)
    try:  # a deleted shipped persona stays deleted: the seed is only imported on first start
        assert sorted(p.name for p in again.all()) == sorted(set(persona_dirs) - {"alpha"})
    finally:
        again.close()


def test_a_start_without_the_seed_folder_leaves_the_import_to_a_later_one(
        tmp_path: Path, embedded: LoadedModel, persona_dirs: dict[str, Path]) -> None:
    """A first start from another folder (the relative default not there) imports nothing and
    does not mark the registry seeded, so the personas arrive on the next start that finds
    them."""
    shapes = module_shapes(embedded.model)
    registry_dir = tmp_path / "registry"
    first = Registry.open(registry_dir, embedded.model_id, shapes, 64,
                          seed_dir=tmp_path / "not-there")
    assert first.all() == []
    first.close()
    seed = next(iter(persona_dirs.values())).parent
    again = Registry.open(registry_dir, embedded.model_id, shapes, 64, seed_dir=seed)
    try:
        assert sorted(p.name for p in again.all()) == sorted(persona_dirs)
    finally:
        again.close()
