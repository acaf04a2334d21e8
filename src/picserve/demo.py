"""`picserve demo`: the whole product once, end to end, on the embedded default.

Makes the tiny model if the models folder has no main model, starts `picserve serve` on a free port,
creates a key, generates through the SDK, saves the PNGs and stops everything it started.
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
from picserve import errors, keycipher, supervisor
from picserve.config import Settings
from picserve.sdk import Client

__all__ = ["free_port", "run", "wait_healthy"]


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
    with supervisor.database(settings) as url:
        account = asyncio.run(_create_key(url, keycipher.load(settings)))
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
                yield f"seed {detail['Seed']}"
        finally:
            service.terminate()
            service.wait(60)


def _submit(client: Client, **params) -> str:
    try:
        return client.generate_images_sdxl(**params)
    except errors.PicserveError as exc:
        raise SystemExit(f"request refused (RetCode {exc.ret_code}): {exc.message}") from None


async def _create_key(url: str, cipher: keycipher.KeyCipher):
    from picserve.tasks import database

    async with database.open_database(url, max_size=2, cipher=cipher) as db:
        return await db.repo.create_key("demo", 100_000)


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
