"""Routes A1, A2, A3, G1, G2: thin handlers over the catalog and the generator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from copydesk.api import schemas
from copydesk.api.auth import Org
from copydesk.api.errors import describe, envelope
from copydesk.app import App
from copydesk.errors import CopydeskError
from copydesk.store import CursorQuery

router = APIRouter(prefix="/v1/applications", tags=["applications"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorObject} for code in (400, 401, 404, 422, 429, 500, 503)
}


def _app(request: Request) -> App:
    app: App = request.app.state.copydesk
    return app


@router.get("", response_model=schemas.ApplicationList, responses=ERRORS)
async def list_applications(
    request: Request,
    org: Org,
    order: Literal["asc", "desc"] = "desc",
    before: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(description="page size, 0 to 100")] = 50,
    type: Annotated[  # Writer's parameter name
        str | None,
        Query(description="every Copydesk agent is 'generation'; other types list nothing"),
    ] = None,
) -> schemas.ApplicationList:
    if type not in (None, "generation"):
        # Integrations send other Writer types (e.g. 'research'): none exist here.
        return schemas.ApplicationList(data=[], has_more=False)
    page = await _app(request).catalog.page(
        org.id, CursorQuery(limit=limit, order=order, after=after, before=before)
    )
    data = [schemas.application(a) for a in page.items]
    return schemas.ApplicationList(
        data=data,
        has_more=page.has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{application_id}", response_model=schemas.Application, responses=ERRORS)
async def retrieve_application(
    request: Request, org: Org, application_id: str
) -> schemas.Application:
    return schemas.application(await _app(request).catalog.get(org.id, application_id))


@router.post(
    "/{application_id}",
    response_model=schemas.GenerateResponse,
    responses={
        **ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or Server-Sent Events when stream is true",
        },
    },
)
async def generate_content(
    request: Request, org: Org, application_id: str, body: schemas.GenerateRequest
) -> Any:
    generator = _app(request).generator
    raw = [i.model_dump() for i in body.inputs]
    prepared = await generator.prepare(org.id, application_id, raw)
    if not body.stream:
        answer = await generator.generate(prepared)
        return schemas.GenerateResponse(title=answer.title, suggestion=answer.suggestion)
    pieces = generator.stream(prepared)
    # Take the first piece before answering, so a failure to start is a real HTTP error.
    first = await anext(pieces, None)
    return StreamingResponse(
        _sse(prepared.agent.spec.output.title, first, pieces),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _event(payload: Any, name: str | None = None) -> str:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _sse(title: str, first: str | None, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        if first is not None:
            yield _event({"delta": {"title": title, "content": first}})
        async for piece in rest:
            yield _event({"delta": {"title": title, "content": piece}})
    except CopydeskError as exc:
        status, items, _ = describe(exc)
        yield _event(envelope(status, items), "error")
        return
    yield "data: [DONE]\n\n"


@router.get("/{application_id}/graphs", response_model=schemas.GraphIds, responses=ERRORS)
async def list_graphs(request: Request, org: Org, application_id: str) -> schemas.GraphIds:
    return schemas.GraphIds(graph_ids=await _app(request).catalog.graphs(org.id, application_id))


@router.put("/{application_id}/graphs", response_model=schemas.GraphIds, responses=ERRORS)
async def update_graphs(
    request: Request, org: Org, application_id: str, body: schemas.GraphIds
) -> schemas.GraphIds:
    stored = await _app(request).catalog.set_graphs(org.id, application_id, body.graph_ids)
    return schemas.GraphIds(graph_ids=stored)
