"""Where the web chat's static files live, for the server to mount.

    from fastapi.staticfiles import StaticFiles
    from clients.webapp import web_dir
    app.mount("/", StaticFiles(directory=web_dir(), html=True), name="web")

Mount it after the API routes so that `/v1/...`, `/health` and `/ready` keep answering.
"""

from __future__ import annotations

from pathlib import Path

_WEB_DIR = Path(__file__).resolve().parent / "web"


def web_dir() -> Path:
    """The folder with index.html, app.js and style.css (plain files, no build step)."""
    return _WEB_DIR
