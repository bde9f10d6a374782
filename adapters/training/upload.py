"""Serve what `cameo train` made: upload the trained persona folder to a running Cameo server.

A server serves what is in its registry, and a folder on disk is not in it: personas enter the
registry by upload (`POST /v1/adapters`), or, for the shipped ones in `adapters/registry/`, by
the import on the registry's very first start. So the trainer's folder is served once uploaded.

Contract:
- `UploadTarget(url, admin_key, api_key, replace)`: where to upload and with which key (the
  admin key; the API key when no admin key is given, as `cameo upload` does).
- `check_target(target, name)` runs before training: it raises `UploadError` for what would make
  the final upload fail for sure (the key is refused, the name is taken and `replace` is off) and
  returns a warning when the server cannot be reached yet (it may be started while training runs).
- `upload(folder, name, target)` uploads through `clients.client.CameoClient.upload`, the call
  `cameo upload` makes, and returns a report line; on any failure it raises `UploadError`, whose
  message says that the folder is kept and gives the command that uploads it later.
- `serve_command(folder, name, url, replace)` is that command line.
Nothing here deletes or moves the trained folder.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from clients.client import CameoClient
from clients.types import CameoConnectionError, CameoError
from clients.wire import DEFAULT_URL


class UploadError(Exception):
    """The trained folder could not be uploaded (or surely cannot be); the message says why."""


@dataclass(frozen=True)
class UploadTarget:
    url: str
    admin_key: str | None = None
    api_key: str | None = None
    replace: bool = False
    timeout: float = 300.0

    def client(self) -> CameoClient:
        return CameoClient(self.url, self.api_key, admin_key=self.admin_key,
                           timeout=self.timeout)


def serve_command(folder: Path, name: str, url: str = DEFAULT_URL, replace: bool = False) -> str:
    """The `cameo upload` command line that serves `folder` as `name` on the server at `url`."""
    words = ["cameo", "upload", str(folder), "--name", name]
    if url.rstrip("/") != DEFAULT_URL:
        words += ["--url", url]
    if replace:
        words.append("--replace")
    return shlex.join(words)


def check_target(target: UploadTarget, name: str) -> str | None:
    """Before training: None when the upload can work, a warning when the server cannot be
    reached now; raises UploadError when the upload would be refused."""
    with target.client() as client:
        try:
            client.adapter(name)
        except CameoConnectionError as exc:
            return (f"warning: {exc.message}; training anyway, the upload at the end tries "
                    "again")
        except CameoError as exc:
            if exc.status == 404:
                return None
            raise UploadError(f"{target.url} would refuse the upload ({exc}); nothing was "
                              "trained: fix the key (--admin-key or CAMEO_ADMIN_KEY) or the "
                              "URL first") from exc
    if not target.replace:
        raise UploadError(f"{target.url} already serves a persona named {name!r}; nothing was "
                          "trained: add --replace to upload a new version of it, or choose "
                          "another --name")
    return None


def upload(folder: Path, name: str, target: UploadTarget) -> str:
    """Upload the trained folder as `name`; the report line, or UploadError (folder kept)."""
    try:
        with target.client() as client:
            adapter = client.upload(folder, name, replace=target.replace)
    except (CameoError, OSError, ValueError) as exc:
        replace = target.replace or getattr(exc, "code", None) == "already_exists"
        advice = {
            "already_exists": " (the name is taken: --replace uploads a new version)",
            "base_model_mismatch": (" (the server runs another base: train with its base, "
                                    "--base-model; if it is the same model under another "
                                    "name, `cameo upload --force` skips the name check; see "
                                    "docs/TRAINING.md)"),
        }.get(str(getattr(exc, "code", "")), "")
        raise UploadError(
            f"the upload to {target.url} failed: {exc}{advice}. The trained folder is kept in "
            f"{folder}; upload it once the problem is fixed with: "
            f"{serve_command(folder, name, target.url, replace)}") from exc
    version = f" as version {adapter.version}" if adapter.version else ""
    return (f"uploaded {folder} to {target.url}{version}: chat with it as "
            f"\"model\": \"{adapter.name}\"")
