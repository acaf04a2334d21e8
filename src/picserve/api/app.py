"""create_app: the FastAPI application around the PICPIK endpoint. No rules live here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from picserve import __version__, keycipher, metrics, playground
from picserve.api import endpoint, openai_compat, openapi
from picserve.config import Settings
from picserve.services import Services
from picserve.storage.factory import open_store
from picserve.tasks import database, recovery, retention
from picserve.translate.prompts import PromptTranslator
from picserve.webhooks import delivery, rules
from picserve.webhooks.store import PostgresDeliveries

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
            rules.parse_allow(settings.webhook_allow)  # a bad PICSERVE_WEBHOOK_ALLOW stops the start
            if chosen is None:
                if not settings.database_url:
                    raise RuntimeError("create_app needs settings.database_url or injected services")
                cipher = keycipher.load(settings)
                db = await stack.enter_async_context(
                    database.open_database(
                        settings.database_url,
                        max_size=settings.api_db_connections,
                        idle_transaction_timeout=2 * settings.stalled_after,
                        cipher=cipher,
                        wait_timeout=settings.db_wait_timeout,
                    )
                )
                store = open_store(settings)
                chosen = Services.build(
                    settings,
                    repo=db.repo,
                    store=store,
                    translator=PromptTranslator(settings.translation_dir),
                    # deliveries on procrastinate's own fetch (db.app), queue "webhooks" only
                    webhooks=delivery.worker_for(settings, db.app, PostgresDeliveries(db.pool, cipher), store),
                )
                sweep = recovery.sweep_forever(db, settings, metrics.lost_runs_counter(metrics.API_REGISTRY))
                background.append(asyncio.create_task(sweep))
            app.state.services = chosen
            if chosen.translator is not None:
                background.append(asyncio.create_task(asyncio.to_thread(chosen.translator.warm_up)))
            cleanup = retention.clean_forever(
                chosen.repo, chosen.store, settings.task_retention, settings.result_cleanup_interval
            )
            background.append(asyncio.create_task(cleanup))
            webhooks = asyncio.create_task(chosen.webhooks.run_forever()) if chosen.webhooks is not None else None
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                if webhooks is not None:  # procrastinate's graceful stop: deliveries under way may end
                    webhooks.cancel()
                    await asyncio.wait([webhooks], timeout=3 * settings.webhook_timeout + 1)

    # /openapi.json and the docs pages are picserve's own (api/openapi.py), not FastAPI's
    app = FastAPI(
        title="picserve", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    openapi.install(app)

    async def picpik(request: Request) -> JSONResponse:
        return await endpoint.handle(services_of(request.app), request)

    # A plain route, not FastAPI's: the endpoint reads its own body and writes its own reply, so
    # FastAPI's per-request handler (dependency solving, body handling) would be work for nothing.
    # Its documentation is api/openapi.py's, built from the wire models.
    app.add_route("/", picpik, methods=["POST"], include_in_schema=False)

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

    # the web playground at /playground/ and a page at GET / linking it (POST / stays the endpoint)
    playground.install(app)

    return app


def services_of(app: FastAPI) -> Services:
    """The services a running app uses (available once its lifespan has started): the admin seam
    through which an embedding program or a test reaches the key repository, the store and the rest."""
    services: Services = app.state.services
    return services
