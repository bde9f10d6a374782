"""The web chat's static files at `/`, mounted after every API route without hiding them.

Contract: `WebMount` serves `clients/web` for GET and HEAD on any path no API route claims, and
for other methods only on paths that are files there (where the answer is 405, `Allow: GET,
HEAD`). So an unknown route answers 404 and a known route asked with the wrong method answers
the router's 405 (with `Allow`), whatever the method, both in OpenAI's error shape (the app's
HTTP error handler writes them). A plain `Mount("/")` would match everything: an unknown POST
would get the static files' 405, and a wrong method on an API route their 404.

It does not serve anything outside the folder (Starlette's `StaticFiles` checks paths).

`web_dir()` finds that folder, `web/` inside the installed `clients` package, without importing
`clients`: the server never imports the clients (they talk to it over HTTP only), and
`importlib.util.find_spec` locates a top-level package without running any of its code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi.staticfiles import StaticFiles
from starlette.routing import Match, Mount, Router
from starlette.types import Scope

_READ = ("GET", "HEAD")


class WebMount(Mount):
    def __init__(self, router: Router, directory: Path | str) -> None:
        super().__init__("/", app=StaticFiles(directory=directory, html=True), name="web")
        self._router = router

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE or scope["type"] != "http":
            return match, child
        if any(route is not self and route.matches(scope)[0] is not Match.NONE
               for route in self._router.routes):
            return Match.NONE, {}  # an API path: the router answers (405 for a wrong method)
        if scope["method"] in _READ or self._is_page({**scope, **child}):
            return match, child
        return Match.NONE, {}

    def _is_page(self, scope: Scope) -> bool:
        files = self.app
        assert isinstance(files, StaticFiles)
        try:
            _, found = files.lookup_path(files.get_path(scope))
        except (OSError, ValueError):
            return False
        return found is not None


def web_dir(package: str = "clients") -> Path:
    """The web chat's folder (index.html, app.js, js/, style.css) in `package`, not imported."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "web"
        if (folder / "index.html").is_file():
            return folder
    raise FileNotFoundError(f"the web chat is not installed: no {package}/web/index.html "
                            "(install Cameo with its package data, or run from a checkout)")
