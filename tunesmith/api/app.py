"""The FastAPI app of ``tunesmith serve``: OpenAI's routes over the store, the worker and the engines."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from tunesmith import web
from tunesmith.api import errors, evaluations, files, fine_tuning, graders, inference, keys, legacy, models, votes
from tunesmith.api.gate import Gate, check_binding
from tunesmith.config import Settings, get_settings
from tunesmith.jobs.store import Store
from tunesmith.jobs.worker import Worker
from tunesmith.serve.pool import EnginePool


def create_app(settings: Settings | None = None, run_worker: bool = True) -> FastAPI:
    settings = settings or get_settings()
    check_binding(settings)
    store = Store(settings)
    worker = Worker(store) if run_worker else None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if worker:
            worker.start()
        yield
        if worker:
            worker.close()
        app.state.engines.close()

    app = FastAPI(title="tunesmith", summary="OpenAI-compatible fine-tuning, self-hosted", lifespan=lifespan)
    app.state.store, app.state.worker, app.state.engines = store, worker, EnginePool(settings)
    errors.install(app)
    app.add_middleware(Gate, store=store)
    for module in (files, fine_tuning, legacy, models, inference, evaluations, keys, votes, graders):
        app.include_router(module.router, responses=errors.ERROR_RESPONSES)
    app.include_router(web.router)  # the dashboard's pages (hold no data: no key to load them)
    app.mount("/static", web.static, name="static")
    return app
