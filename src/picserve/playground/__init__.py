"""The web playground: static files (plain ES modules, no build step) at `/playground/`, and a small
page at `GET /` that links it with the API docs. `POST /` stays the PICPIK endpoint.

The page speaks only the public API: it signs each request in the browser with the key the user
enters (WebCrypto's SHA-1 where the page is a secure context, its own `sha1.js` elsewhere, e.g. plain
HTTP from a LAN address). Its responses forbid framing (the page holds a private key) and allow
scripts from this server only.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from picserve import __version__

__all__ = ["PLAYGROUND_URL", "STATIC_DIR", "install"]

PLAYGROUND_URL = "/playground"
STATIC_DIR = Path(__file__).parent / "static"

#: scripts, styles and requests from this server only; images also from data:/blob: URIs (previews, the
#: mask, fetched results) and any http(s) host (results on an S3 store), which the page fetches as well
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self' http: https:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # revalidated on every load (ETag): after an upgrade no stale module is mixed with new ones
    "Cache-Control": "no-cache",
}
#: ES modules must come with a JavaScript type, whatever the host's mime.types says
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class _Static(StaticFiles):
    """StaticFiles with the playground's headers and JavaScript's type fixed."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        content_type = _TYPES.get(Path(path).suffix)
        if content_type and response.status_code == 200:
            response.headers["content-type"] = content_type
        return response


def install(app: FastAPI) -> None:
    """`GET /` (a page linking the playground and the docs), `GET /playground` (→ `/playground/`) and
    the static files beneath it; none of them is in /openapi.json."""

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(_home(request.scope.get("root_path", "")), headers=_HEADERS)

    @app.get(PLAYGROUND_URL, include_in_schema=False)
    async def to_playground() -> RedirectResponse:
        # relative, so it holds behind a proxy that serves picserve under a path prefix
        return RedirectResponse("playground/", status_code=308)

    app.mount(PLAYGROUND_URL, _Static(directory=STATIC_DIR, html=True), name="playground")


def _home(root: str) -> str:
    base = escape(root.rstrip("/"))
    links = [
        (f"{base}{PLAYGROUND_URL}/", "Playground", "generate images in the browser"),
        (f"{base}/docs", "API docs", "every action, with signed examples (Swagger UI; also /redoc)"),
        (f"{base}/openapi.json", "OpenAPI", "the machine-readable description"),
        (f"{base}/healthz", "Health", "liveness and version"),
    ]
    items = "\n".join(f'<li><a href="{href}">{name}</a> — {what}</li>' for href, name, what in links)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>picserve</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{base}{PLAYGROUND_URL}/style.css">
</head>
<body>
<main class="home card">
<h1>picserve <span class="subtle">{escape(__version__)}</span></h1>
<p>Self-hosted SDXL image generation behind the PICPIK API: clients send signed JSON to <code>POST /</code>.</p>
<ul>
{items}
</ul>
</main>
</body>
</html>
"""
