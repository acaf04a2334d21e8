"""The playground's routes on the app: `GET /` links it, `/playground/` serves its files with their
headers, `POST /` is still the PICPIK endpoint, and none of it is in /openapi.json. No browser."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from picserve.api import openapi
from picserve.config import Settings
from picserve.playground import STATIC_DIR
from tests.api.conftest import Stack, open_stack


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    (tmp_path / "models").mkdir()
    with open_stack(Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu")) as stack:
        yield stack


def test_home_links_the_playground_and_post_is_still_the_endpoint(stack):
    home = stack.api.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert 'href="/playground/"' in home.text and 'href="/docs"' in home.text
    reply = stack.api.post("/", json={"Action": "ListModels", "PublicKey": "nobody", "Signature": "0" * 40})
    assert reply.status_code == 200 and reply.json()["RetCode"] == 171  # unknown key: PICPIK's reply, not HTML


def test_playground_redirects_to_its_folder_and_serves_every_module(stack):
    redirect = stack.api.get("/playground", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "playground/"
    page = stack.api.get("/playground/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    headers = page.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in headers["content-security-policy"] and headers["cache-control"] == "no-cache"
    # every module the page loads, and every module those import, is served as JavaScript
    wanted = {"app.js", "style.css"}
    for source in STATIC_DIR.glob("*.js"):
        wanted |= set(re.findall(r'from "\./([\w.-]+\.js)"', source.read_text()))
    assert wanted <= {p.name for p in STATIC_DIR.iterdir()}, wanted
    for name in sorted(wanted):
        response = stack.api.get(f"/playground/{name}")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
    assert stack.api.get("/playground/nope.js").status_code == 404


def test_the_playground_is_not_in_the_api_description(stack):
    paths = openapi.document(stack.api.app)["paths"]
    assert list(paths["/"]) == ["post"]
    assert not [p for p in paths if p.startswith("/playground")]


def test_the_page_loads_nothing_from_elsewhere():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path.name  # no CDN
        assert "innerHTML" not in text, path.name  # text goes in as text
