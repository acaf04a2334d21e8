"""create_app: the FastAPI application around the PICPIK endpoint. No rules live here."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from picserve import __version__
from picserve import catalog as catalog_module
from picserve.api import endpoint
from picserve.api.context import Context
from picserve.config import Settings
from picserve.storage.disk import DiskStore
from picserve.tasks import database, recovery, service
from picserve.translate.prompts import PromptTranslator

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings, database_url: str) -> FastAPI:
    """The API on `database_url`; the pool opens and the background sweeps start with the app."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with database.open_database(database_url) as db:
            store = DiskStore(settings.results_dir, settings.result_ttl_seconds)
            app.state.ctx = Context(
                settings=settings,
                tasks=service.TaskService(db, settings.credit_divisor, settings.max_queued_tasks),
                repo=db.repo,
                catalog=catalog_module.Catalog(settings.models_dir),
                store=store,
                translator=PromptTranslator(settings.translation_dir),
            )
            background = [
                asyncio.create_task(asyncio.to_thread(app.state.ctx.translator.warm_up)),
                asyncio.create_task(recovery.sweep_forever(db, settings.stalled_after, settings.stalled_after / 3)),
                asyncio.create_task(_expire_forever(store)),
            ]
            try:
                yield
            finally:
                for task in background:
                    task.cancel()

    app = FastAPI(title="picserve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/")
    async def picpik(request: Request):
        return await endpoint.handle(request.app.state.ctx, request)

    @app.get("/results/{key}")
    async def result(key: str, request: Request):
        path = request.app.state.ctx.store.path(key)
        if path is None:
            return JSONResponse({"Message": "result not found or expired"}, status_code=404)
        return FileResponse(path, media_type="image/png")

    @app.get("/healthz")
    async def health():
        return {"ok": True, "version": __version__}

    return app


async def _expire_forever(store: DiskStore, every: float = 600) -> None:
    while True:
        try:
            removed = await asyncio.to_thread(store.expire)
            if removed:
                log.info("removed %d expired results", removed)
        except Exception:
            log.exception("result expiry failed")
        await asyncio.sleep(every)
