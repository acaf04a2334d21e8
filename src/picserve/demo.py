"""`picserve demo`: the whole product once, end to end, on the embedded default.

Makes the tiny model if the models folder has no main model, starts `picserve serve` on a free port,
uses the data folder's "demo" key (made on the first run, topped up when low), generates through the
SDK, saves the PNGs, stops everything it started and says what to do next.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from picserve import catalog as catalog_module
from picserve import errors, keycipher
from picserve.config import Settings
from picserve.sdk import Client
from picserve.tasks import embedded_pg

__all__ = ["DEMO_KEY", "free_port", "next_steps", "run", "wait_healthy"]

#: the name of the key the demo makes once and reuses
DEMO_KEY = "demo"
#: the demo key's credits: made with, and topped up to, this many
DEMO_CREDITS = 100_000


def run(
    settings: Settings,
    *,
    model: str | None,
    prompt: str,
    width: int,
    height: int,
    steps: int,
    batch: int,
    seed: int,
    out: Path,
) -> Iterator[str]:
    catalog = catalog_module.Catalog.of(settings, ttl=0)
    if model is None:
        from picserve.engine import tiny

        tiny.write_model(settings.models_dir)
        model = tiny.TINY_CODE
    if catalog.get("main", model) is None:
        raise SystemExit(f"no main model {model!r} in {settings.models_dir / 'main'}")

    port = free_port()
    with embedded_pg.database(settings) as url:
        account = asyncio.run(_demo_key(url, keycipher.load(settings)))
        env = {
            **os.environ,
            **settings.to_env(),
            "PICSERVE_DATABASE_URL": url,
            "PICSERVE_PORT": str(port),
            "PICSERVE_HOST": "127.0.0.1",
            "PICSERVE_LOG_LEVEL": "warning",
        }
        service = subprocess.Popen([sys.executable, "-m", "picserve", "serve"], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, service)
            with Client(base, account.public_key, account.private_key) as client:
                uid = _submit(
                    client,
                    MainModel={"ModelCode": model, "InferenceParams": {"Steps": steps}},
                    PositivePrompts=[prompt],
                    Width=width,
                    Height=height,
                    BatchSize=batch,
                    Seed=seed,
                )
                yield f"task {uid} queued"
                detail = client.wait(uid)
                if detail["Status"] != "Finished":
                    raise SystemExit(f"task {uid} ended {detail['Status']}: {detail['ErrorMassage']}")
                for index, (image_url, image_seed) in enumerate(
                    zip(detail["ImgList"], detail["SeedList"], strict=True)
                ):
                    path = client.download(image_url, out / f"{uid}-{index}.png")
                    yield f"{path}  seed={image_seed}  {width}x{height}"
        finally:
            service.terminate()
            service.wait(60)
    yield from next_steps(settings, tiny_model=model == _tiny_code())


def next_steps(settings: Settings, *, tiny_model: bool) -> list[str]:
    """What the demo says last: what its image is, and what to do next."""
    playground = f"http://{settings.host}:{settings.port}/playground/"
    lines = [""]
    if tiny_model:
        lines += [
            "The image is noise by design: the tiny model has random weights. It shows that every layer,",
            "from the signed request to the PNG, works. For real images add an SDXL checkpoint (README:",
            '"Your first real image").',
            "",
        ]
    lines += [
        "Next:",
        "  make serve                                      run the service in the foreground (Ctrl-C stops it)",
        "  .venv/bin/picserve keys create --name me        a key of your own (PublicKey, PrivateKey)",
        f"  {playground:<47} the playground, while `make serve` runs",
    ]
    return lines


def _tiny_code() -> str:
    from picserve.engine import tiny

    return tiny.TINY_CODE


def _submit(client: Client, **params) -> str:
    try:
        return client.generate_images_sdxl(**params)
    except errors.PicserveError as exc:
        raise SystemExit(f"request refused (RetCode {exc.ret_code}): {exc.message}") from None


async def _demo_key(url: str, cipher: keycipher.KeyCipher):
    """The data folder's demo key: the live one named DEMO_KEY (topped up to DEMO_CREDITS when it has
    less left), else a new one. One key, however many times the demo runs."""
    from picserve.tasks import database

    async with database.open_database(url, max_size=2, cipher=cipher) as db:
        for account in await db.repo.list_keys():
            if account.name == DEMO_KEY and not account.revoked and account.expire_at is None:
                left = account.total_credits - account.used_credits
                if left < DEMO_CREDITS:
                    await db.repo.add_credits(account.public_key, DEMO_CREDITS - left)
                return account
        return await db.repo.create_key(DEMO_KEY, DEMO_CREDITS)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base: str, service: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait until `picserve serve` at `base` answers /healthz; SystemExit when it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"picserve serve exited with {service.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("picserve serve did not become healthy")
