"""The HTTP entry point: a FastAPI app over one opened :class:`copydesk.app.App`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from copydesk import __version__
from copydesk.api import applications, errors
from copydesk.app import App


def create_api(app: App, *, manage_lifecycle: bool = True) -> FastAPI:
    """The ASGI app. With ``manage_lifecycle`` its lifespan opens and closes ``app``."""

    @asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            async with app:
                yield
        else:
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
    api.include_router(applications.router)

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api
