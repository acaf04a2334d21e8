"""create_app: the FastAPI application around the PICPIK endpoint. No rules live here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from picserve import __version__, keycipher, metrics
from picserve.api import endpoint, openai_compat, openapi
from picserve.api.services import Services
from picserve.config import Settings
from picserve.storage.factory import open_store
from picserve.tasks import database, recovery, retention
from picserve.translate.prompts import PromptTranslator

__all__ = ["create_app", "services_of"]

log = logging.getLogger(__name__)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The API. Without `services`, it opens PostgreSQL at `settings.database_url` with the app, keeps
    results on disk and runs the stalled-worker sweep; with them (e.g. the in-memory repository and
    store), it uses those as they are."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            chosen = services
            background: list[asyncio.Task[Any]] = []
            if chosen is None:
                if not settings.database_url:
                    raise RuntimeError("create_app needs settings.database_url or injected services")
                db = await stack.enter_async_context(
                    database.open_database(
                        settings.database_url,
                        max_size=settings.api_db_connections,
                        idle_transaction_timeout=2 * settings.stalled_after,
                        cipher=keycipher.load(settings),
                        wait_timeout=settings.db_wait_timeout,
                    )
                )
                chosen = Services.build(
                    settings,
                    repo=db.repo,
                    store=open_store(settings),
                    translator=PromptTranslator(settings.translation_dir),
                )
                sweep = recovery.sweep_forever(db, settings.stalled_after, settings.stalled_after / 3)
                background.append(asyncio.create_task(sweep))
            app.state.services = chosen
            if chosen.translator is not None:
                background.append(asyncio.create_task(asyncio.to_thread(chosen.translator.warm_up)))
            cleanup = retention.clean_forever(
                chosen.repo, chosen.store, settings.task_retention, settings.result_cleanup_interval
            )
            background.append(asyncio.create_task(cleanup))
            try:
                yield
            finally:
                for task in background:
                    task.cancel()

    # /openapi.json and the docs pages are picserve's own (api/openapi.py), not FastAPI's
    app = FastAPI(
        title="picserve", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    openapi.install(app)

    @app.post("/")
    async def picpik(request: Request) -> JSONResponse:
        return await endpoint.handle(services_of(request.app), request)

    @app.get("/results/{key}")
    async def result(key: str, request: Request) -> Response:
        # only results are served: a task's inputs (`.ref`) never leave the server
        data = await asyncio.to_thread(services_of(request.app).store.get, key) if key.endswith(".png") else None
        if data is None:
            return JSONResponse({"Message": "result not found or expired"}, status_code=404)
        return Response(data, media_type="image/png")

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus' text format (metrics.py): this process's requests, the queue read now."""
        services = services_of(request.app)
        body = await metrics.render_api(services.repo, services.translator, services.catalog)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    # OpenAI's images API beside PICPIK's, for tools that speak it (api/openai_compat.py)
    app.include_router(openai_compat.router)

    return app


def services_of(app: FastAPI) -> Services:
    """The services a running app uses (available once its lifespan has started): the admin seam
    through which an embedding program or a test reaches the key repository, the store and the rest."""
    services: Services = app.state.services
    return services
