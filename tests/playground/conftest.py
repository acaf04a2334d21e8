"""The web playground in a real browser: Playwright for Python driving the system's Chromium (Debian's
`chromium`, which .ci/run installs; Playwright's own browser downloads are never used). Where either
is missing the browser tests skip and say which (under CI, `CI=true`, they fail instead: tests/needs.py).

Chromium maps `playground.test` to 127.0.0.1: a page opened there is not a secure context (no
WebCrypto), as when the playground is opened over plain HTTP from a LAN address.

Screenshots for the docs: `PLAYGROUND_SCREENSHOTS=1 pytest tests/playground` writes them to docs/
(without it none are taken, so a test run leaves the tree as it was).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from picserve.sdk import Client
from tests import needs
from tests.processes import create_key, running, serve

#: the host name that Chromium resolves to 127.0.0.1 (not "potentially trustworthy", unlike localhost)
INSECURE_HOST = "playground.test"
DOCS = Path(__file__).resolve().parents[2] / "docs"

_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium's own outbound connections (updates, sync, field trials) fail noisily
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module (module-scoped: Playwright's loop is gone before other modules run)."""
    sync_api = needs.need_module(
        "playwright.sync_api", "Playwright for Python is not installed (it is in the test extra)"
    )
    executable = chromium_path()
    needs.need(
        None
        if executable is not None
        else "no Chromium: install Debian's `chromium` (.ci/run does) to run the playground's browser tests"
    )
    assert executable is not None
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshot() -> Callable[[Any, str], None]:
    """`screenshot(page, "playground.png")`: into docs/ when PLAYGROUND_SCREENSHOTS=1, else nothing."""

    def take(page: Any, name: str) -> None:
        if os.environ.get("PLAYGROUND_SCREENSHOTS") != "1":
            return
        shot = Image.open(io.BytesIO(page.screenshot(animations="disabled", caret="hide"))).convert("RGB")
        # 256 colours keep a page's flat colours exact and make the file a third of the size
        shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(DOCS / name, optimize=True)

    return take


class BrowserErrors:
    """What the page reported: uncaught errors and console errors (CSP refusals among them)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, page: Any) -> Any:
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on("console", lambda m: self.messages.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("response", lambda r: self.messages.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        return page


@dataclass
class Server:
    """A `picserve serve` for a module's browser tests, and the key its page signs with."""

    base: str
    port: int
    public_key: str
    private_key: str

    def client(self) -> Client:
        return Client(self.base, self.public_key, self.private_key)


@contextlib.contextmanager
def served(data_dir: Path, models: Path, name: str, env: Mapping[str, str]) -> Iterator[Server]:
    """`picserve serve` on `data_dir` and `models` (the CPU, with `env`), and a key named `name`."""
    log = data_dir.parent / f"{data_dir.name}-serve.log"
    process = serve("--data-dir", data_dir, "--models-dir", models, "--device", "cpu", log=log, env=env)
    with running(process):
        key = create_key(name=name, data_dir=data_dir, env=env)
        yield Server(process.base, process.port, key["PublicKey"], key["PrivateKey"])


@pytest.fixture(scope="module")
def context(browser) -> Iterator[Any]:
    """One browser profile for the module (its localStorage holds the gallery)."""
    context = browser.new_context(
        viewport={"width": 1440, "height": 900}, color_scheme="light", locale="en-US", reduced_motion="reduce"
    )
    context.set_default_timeout(30_000)
    yield context
    context.close()


@pytest.fixture
def page(context) -> Iterator[Any]:
    """A page of the module's profile; the test fails on any uncaught error, CSP refusal or HTTP error."""
    errors = BrowserErrors()
    page = errors.watch(context.new_page())
    yield page
    page.close()
    assert errors.messages == []
