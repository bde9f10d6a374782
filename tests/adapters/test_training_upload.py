"""`cameo train --upload URL`: the trained folder reaches a live server through the project's own
client, and nothing is lost when it cannot (the folder stays, the message says how to upload it).

No training runs here: the trainer's `train` is replaced by a stand-in that writes an existing
small adapter folder, so `main` runs its real flow (card check, pre-flight, upload, messages).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

import adapters.training.train as trainer
from adapters.training.train import TrainConfig, TrainResult, read_card, write_card
from adapters.training.upload import UploadError, UploadTarget, check_target, upload
from server.api.app import create_app
from server.composition import Cameo
from tests.conftest import CameoFactory
from tests.helpers import free_port, live_server

TEMPLATE = Path(__file__).resolve().parents[2] / "adapters" / "training" / "template"
FILES = ("adapter_config.json", "adapter_model.safetensors")


def _trained(source: Path, out: Path, card: dict[str, Any] | None = None) -> Path:
    """A folder as the trainer leaves it: adapter files plus persona.json."""
    out.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(source / name, out / name)
    (out / "persona.json").write_text(json.dumps(card or {"display_name": "Trained"}))
    return out


def _stand_in(source: Path, calls: list[TrainConfig]) -> Any:
    """A `train` that writes `source`'s adapter and the run's card instead of training."""
    def train(config: TrainConfig, loaded: Any = None) -> TrainResult:
        calls.append(config)
        card = read_card(config)
        config.out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(source / name, config.out / name)
        write_card(config, card)
        return TrainResult(out=config.out, steps=1, losses=[1.0])
    return train


def _argv(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(TEMPLATE / "chats.jsonl"), "--name", name,
            "--persona-card", str(TEMPLATE / "persona.json"), "--out", str(tmp_path / name),
            *extra]


def test_upload_serves_the_folder_and_refuses_a_taken_name_up_front(
        served: tuple[Cameo, str], extra_adapters: dict[str, Path], tmp_path: Path) -> None:
    cameo, url = served
    folder = _trained(extra_adapters["alpha"], tmp_path / "bones",
                      {"display_name": "Bones", "x-trainer": {"run": 7}})
    target = UploadTarget(url)
    assert check_target(target, "bones") is None
    report = upload(folder, "bones", target)
    assert "version 1" in report and '"model": "bones"' in report
    assert "bones" in [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    persona = cameo.registry.get("bones")
    assert persona is not None and persona.adapter is not None
    assert persona.card.extensions == {"x-trainer": {"run": 7}}

    with pytest.raises(UploadError, match="--replace"):  # before any training starts
        check_target(target, "bones")
    again = UploadTarget(url, replace=True)
    assert check_target(again, "bones") is None
    assert "version 2" in upload(folder, "bones", again)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "persona.json"])


def test_a_failed_upload_keeps_the_folder_and_gives_the_command(
        served: tuple[Cameo, str], extra_adapters: dict[str, Path], tmp_path: Path) -> None:
    _, url = served
    folder = _trained(extra_adapters["alpha"], tmp_path / "kept")
    closed = UploadTarget(f"http://127.0.0.1:{free_port()}")
    assert "training anyway" in str(check_target(closed, "kept"))
    with pytest.raises(UploadError) as refused:
        upload(folder, "kept", closed)
    message = str(refused.value)
    assert f"kept in {folder}" in message and f"cameo upload {folder} --name kept" in message
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "persona.json"])

    assert "version 1" in upload(folder, "kept", UploadTarget(url))
    with pytest.raises(UploadError) as taken:  # a name taken since: the retry needs --replace
        upload(folder, "kept", UploadTarget(url))
    assert "--replace" in str(taken.value) and folder.is_dir()


def test_cameo_train_uploads_at_the_end(served: tuple[Cameo, str],
                                        extra_adapters: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cameo, url = served
    calls: list[TrainConfig] = []
    monkeypatch.setattr(trainer, "train", _stand_in(extra_adapters["alpha"], calls))
    assert trainer.main(_argv(tmp_path, "greta", "--upload", url)) == 0
    assert "uploaded" in capsys.readouterr().out and len(calls) == 1
    info = httpx.get(f"{url}/v1/adapters/greta").json()
    card = json.loads((TEMPLATE / "persona.json").read_text())
    assert info["kind"] == "adapter" and info["persona"]["display_name"] == card["display_name"]
    assert info["persona"]["x-template-note"] == card["x-template-note"]  # x- fields are kept
    assert (tmp_path / "greta" / "adapter_model.safetensors").is_file()  # the folder stays
    persona = cameo.registry.get("greta")
    assert persona is not None and persona.card.system_prompt == card["system_prompt"]


def test_cameo_train_without_upload_says_how_to_serve(
        extra_adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trainer, "train", _stand_in(extra_adapters["alpha"], []))
    assert trainer.main(_argv(tmp_path, "greta")) == 0
    assert f"cameo upload {tmp_path / 'greta'} --name greta" in capsys.readouterr().out


def test_cameo_train_keeps_the_folder_when_the_upload_fails(
        extra_adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trainer, "train", _stand_in(extra_adapters["alpha"], []))
    url = f"http://127.0.0.1:{free_port()}"
    assert trainer.main(_argv(tmp_path, "greta", "--upload", url)) == 1
    err = capsys.readouterr().err
    assert f"kept in {tmp_path / 'greta'}" in err and "cameo upload" in err
    assert (tmp_path / "greta" / "adapter_model.safetensors").is_file()


def test_a_refused_key_stops_before_training(make_cameo: CameoFactory,
                                             extra_adapters: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cameo = make_cameo(admin_key="root-key", api_keys="user-key")
    calls: list[TrainConfig] = []
    monkeypatch.setattr(trainer, "train", _stand_in(extra_adapters["alpha"], calls))
    monkeypatch.delenv("CAMEO_ADMIN_KEY", raising=False)
    monkeypatch.setenv("CAMEO_API_KEY", "user-key")  # a user key may not upload
    with live_server(create_app(cameo.settings, cameo)) as url:
        assert trainer.main(_argv(tmp_path, "greta", "--upload", url)) == 1
        assert calls == []  # refused before any training
        monkeypatch.setenv("CAMEO_ADMIN_KEY", "root-key")
        assert trainer.main(_argv(tmp_path, "greta", "--upload", url)) == 0
        assert cameo.registry.get("greta") is not None
