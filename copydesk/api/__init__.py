"""The HTTP entry point: a FastAPI app over one opened :class:`copydesk.app.App`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from copydesk import __version__
from copydesk.api import applications, batches, errors, files, job_control, jobs, webhooks
from copydesk.app import App


def create_api(app: App, *, manage_lifecycle: bool = True, run_workers: bool = False) -> FastAPI:
    """The ASGI app. With ``manage_lifecycle`` its lifespan opens and closes ``app``; with
    ``run_workers`` it runs an in-process worker (the embedded default), stopped gracefully
    at shutdown before the server exits."""

    @asynccontextmanager
    async def workers() -> AsyncIterator[None]:
        if not run_workers:
            yield
            return
        worker = app.worker()
        task = asyncio.create_task(worker.run(), name="worker")
        try:
            yield
        finally:
            worker.stop()
            await task

    @asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            async with app, workers():
                yield
        else:
            async with workers():
                yield

    api = FastAPI(
        title="Copydesk",
        version=__version__,
        description="Self-hosted no-code writing agents, wire-compatible with Writer's "
        "Applications API.",
        lifespan=lifespan,
    )
    api.state.copydesk = app
    errors.install(api)
    api.include_router(jobs.router)  # first: it reserves /v1/applications/jobs/...
    api.include_router(applications.router)
    api.include_router(files.router)
    api.include_router(webhooks.router)
    api.include_router(job_control.router)
    api.include_router(batches.router)

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api
