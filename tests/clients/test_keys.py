"""Keys: the clients send the API key on inference routes and the admin key on admin routes, and
report the server's refusals clearly (a server with CAMEO_API_KEYS and CAMEO_ADMIN_KEY set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from clients.cli import main
from clients.client import CameoClient, CameoError
from tests.clients._support import MAX_TOKENS
from tests.clients.conftest import ADMIN_KEY, USER_KEY

REPO = Path(__file__).resolve().parents[2]


def test_client_without_a_key_is_refused(keyed_server_url: str) -> None:
    with CameoClient(keyed_server_url) as cameo, pytest.raises(CameoError) as caught:
        cameo.personas()
    assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    assert "API key" in caught.value.message


def test_client_with_the_user_key_chats_but_may_not_administer(keyed_server_url: str,
                                                                upload_dir: Path) -> None:
    with CameoClient(keyed_server_url, api_key=USER_KEY) as cameo:
        assert any(p.id == "alpha" for p in cameo.personas())
        assert cameo.chat("alpha", "Hi", max_tokens=MAX_TOKENS).usage is not None
        assert "".join(cameo.stream_text("alpha", "Hi", max_tokens=MAX_TOKENS)) is not None
        assert cameo.persona("alpha").display_name == "Alpha"
        with pytest.raises(CameoError) as caught:
            cameo.upload(upload_dir, "keyed")
    assert caught.value.status == 403 and caught.value.code == "insufficient_permissions"


def test_client_with_the_admin_key_uploads(keyed_server_url: str, upload_dir: Path,
                                           uploaded: list[str]) -> None:
    uploaded.append("keyed")
    with CameoClient(keyed_server_url, api_key=USER_KEY, admin_key=ADMIN_KEY) as cameo:
        adapter = cameo.upload(upload_dir, "keyed", replace=True)
        assert adapter.name == "keyed"
        assert cameo.chat("keyed", "Hi", max_tokens=2).usage is not None
        assert cameo.delete("keyed").deleted


def test_openai_sdk_sends_its_key(keyed_server_url: str) -> None:
    good = openai.OpenAI(base_url=f"{keyed_server_url}/v1", api_key=USER_KEY, max_retries=0)
    answer = good.chat.completions.create(model="bravo", max_tokens=MAX_TOKENS,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content is not None
    bad = openai.OpenAI(base_url=f"{keyed_server_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.code == "invalid_api_key"


def test_cli_takes_the_key_from_a_flag_or_the_environment(
        keyed_server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", keyed_server_url, "personas"]) == 1
    err = capsys.readouterr().err
    assert "a valid API key is required" in err and "HTTP 401" in err

    assert main(["--url", keyed_server_url, "--api-key", USER_KEY, "personas"]) == 0
    assert "alpha" in capsys.readouterr().out

    env = {**os.environ, "CAMEO_URL": keyed_server_url, "CAMEO_API_KEY": USER_KEY}
    done = subprocess.run([sys.executable, "-m", "clients.cli", "chat", "-p", "alpha", "-m",
                           "Hi", "--max-tokens", str(MAX_TOKENS)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr

    assert main(["--url", keyed_server_url, "--api-key", USER_KEY, "rm", "not-there"]) == 1
    assert "use the admin key" in capsys.readouterr().err
