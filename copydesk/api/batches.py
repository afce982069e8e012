"""Batches (a Copydesk extension): thin handlers over :class:`copydesk.batching.Batches`.

Routes: ``POST/GET /v1/applications/{application_id}/batches``, ``GET /v1/batches``,
``GET /v1/batches/{batch_id}`` and its ``/jobs``, ``/results``, ``/events`` (server-sent
events), ``POST …/retry`` and ``POST …/cancel``. Body formats and statuses:
:mod:`copydesk.batches`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from copydesk.api.applications import ERRORS
from copydesk.api.auth import Org
from copydesk.api.idempotency import Idempotent
from copydesk.api.schemas import iso
from copydesk.batches import Batch, BatchJob, body_format
from copydesk.batching import Batches, DryRun, Event
from copydesk.errors import BatchTooLarge, InvalidRequest, Problem

router = APIRouter(tags=["batches"])


# --- wire shapes ----------------------------------------------------------------------------


class RequestCountsOut(BaseModel):
    total: int
    in_progress: int
    completed: int
    failed: int
    cancelled: int


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    application_id: str
    agent_version: int
    status: Literal["in_progress", "completed", "cancelled"]
    priority: int
    request_counts: RequestCountsOut
    usage: UsageOut
    created_at: str
    completed_at: str | None = None
    cancelled_at: str | None = None


class BatchList(BaseModel):
    data: list[BatchObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class ProblemOut(BaseModel):
    description: str
    rule: str
    input: str | None = None


class RowReportOut(BaseModel):
    row_index: int
    custom_id: str | None
    valid: bool
    problems: list[ProblemOut]


class DryRunReport(BaseModel):
    dry_run: Literal[True] = True
    application_id: str
    total: int
    valid: int
    invalid: int
    rows: list[RowReportOut]


class JobOutput(BaseModel):
    title: str | None = None
    suggestion: str


class BatchJobObject(BaseModel):
    id: str
    batch_id: str
    row_index: int
    custom_id: str | None
    application_id: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    inputs: list[dict[str, Any]]
    data: JobOutput | None = None
    error: str | None = None
    attempts_made: int
    priority: int
    created_at: str
    updated_at: str | None = None
    completed_at: str | None = None
    usage: UsageOut


class BatchJobList(BaseModel):
    result: list[BatchJobObject]
    total_count: int
    offset: int
    limit: int


def batch_object(batch: Batch) -> BatchObject:
    c, u = batch.counts, batch.usage
    return BatchObject(
        id=batch.id,
        application_id=batch.agent_id,
        agent_version=batch.agent_version,
        status=batch.status,
        priority=batch.priority,
        request_counts=RequestCountsOut(
            total=c.total,
            in_progress=c.in_progress,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
        ),
        usage=UsageOut(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens),
        created_at=iso(batch.created_at) or "",
        completed_at=iso(batch.completed_at),
        cancelled_at=iso(batch.cancelled_at),
    )


def batch_job_object(item: BatchJob) -> BatchJobObject:
    job = item.job
    data = None
    if job.status == "completed":
        data = JobOutput(title=job.result_title, suggestion=job.result_suggestion or "")
    return BatchJobObject(
        id=job.id,
        batch_id=item.batch_id,
        row_index=item.row_index,
        custom_id=item.custom_id,
        application_id=job.agent_id,
        status=job.status,
        inputs=job.inputs,
        data=data,
        error=job.error if job.status in ("failed", "cancelled") else None,
        attempts_made=job.attempts,
        priority=job.priority,
        created_at=iso(job.created_at) or "",
        updated_at=iso(job.updated_at),
        completed_at=iso(job.completed_at),
        usage=UsageOut(prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens),
    )


def dry_run_report(report: DryRun) -> DryRunReport:
    return DryRunReport(
        application_id=report.application_id,
        total=len(report.rows),
        valid=len(report.rows) - report.invalid,
        invalid=report.invalid,
        rows=[
            RowReportOut(
                row_index=r.row_index,
                custom_id=r.custom_id,
                valid=not r.problems,
                problems=[
                    ProblemOut(description=p.description, rule=p.rule, input=p.input)
                    for p in r.problems
                ],
            )
            for r in report.rows
        ],
    )


def _batches(request: Request) -> Batches:
    batches: Batches = request.app.state.copydesk.batches
    return batches


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BatchTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BatchTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# --- routes ---------------------------------------------------------------------------------


@router.post(
    "/v1/applications/{application_id}/batches",
    status_code=202,
    response_model=BatchObject,
    responses={**ERRORS, 200: {"model": DryRunReport, "description": "dry_run=true"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "rows as a JSON array, JSONL or CSV (see the README)",
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    },
)
async def create_batch(
    request: Request,
    org: Org,
    application_id: str,
    idem: Idempotent,
    dry_run: Annotated[bool, Query(description="validate every row, create nothing")] = False,
    priority: Annotated[
        int | None, Query(description="-100..100; default -1 (below single jobs)")
    ] = None,
) -> JSONResponse:
    fmt = body_format(request.headers.get("content-type"))
    if fmt is None:
        raise InvalidRequest(
            [
                Problem(
                    "a batch body is application/json, application/x-ndjson "
                    "(or application/jsonl) or text/csv",
                    "content_type",
                )
            ]
        )
    batches = _batches(request)
    limit: int = request.app.state.copydesk.settings.batch_max_bytes
    body = await _read_body(request, limit)

    async def submit() -> JSONResponse:
        result = await batches.submit(
            org.id, application_id, body, fmt, priority=priority, dry_run=dry_run
        )
        if isinstance(result, DryRun):
            return JSONResponse(dry_run_report(result).model_dump(), status_code=200)
        return JSONResponse(batch_object(result).model_dump(), status_code=202)

    return await idem.respond(submit, body)  # Idempotency-Key: one batch per key


def _list(items: list[Batch], has_more: bool) -> dict[str, Any]:
    data = [batch_object(b) for b in items]
    return BatchList(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    ).model_dump()


Limit = Annotated[int, Query(description="page size; default 50")]
After = Annotated[str | None, Query(description="the last id of the previous page")]


@router.get("/v1/applications/{application_id}/batches", response_model=BatchList, responses=ERRORS)
async def list_application_batches(
    request: Request, org: Org, application_id: str, limit: Limit = 50, after: After = None
) -> JSONResponse:
    items, has_more = await _batches(request).page(org.id, application_id, limit, after)
    return JSONResponse(_list(items, has_more))


@router.get("/v1/batches", response_model=BatchList, responses=ERRORS)
async def list_batches(
    request: Request, org: Org, limit: Limit = 50, after: After = None
) -> JSONResponse:
    items, has_more = await _batches(request).page(org.id, None, limit, after)
    return JSONResponse(_list(items, has_more))


@router.get("/v1/batches/{batch_id}", response_model=BatchObject, responses=ERRORS)
async def retrieve_batch(request: Request, org: Org, batch_id: str) -> BatchObject:
    return batch_object(await _batches(request).get(org.id, batch_id))


@router.get("/v1/batches/{batch_id}/jobs", response_model=BatchJobList, responses=ERRORS)
async def list_batch_jobs(
    request: Request,
    org: Org,
    batch_id: str,
    status: Annotated[
        str | None,
        Query(description="queued, running, in_progress, completed, failed or cancelled"),
    ] = None,
    custom_id: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> BatchJobList:
    items, total = await _batches(request).jobs(org.id, batch_id, status, custom_id, offset, limit)
    return BatchJobList(
        result=[batch_job_object(i) for i in items], total_count=total, offset=offset, limit=limit
    )


@router.get(
    "/v1/batches/{batch_id}/results",
    responses={
        **ERRORS,
        200: {"content": {"application/x-ndjson": {}, "text/csv": {}}},
    },
)
async def batch_results(
    request: Request,
    org: Org,
    batch_id: str,
    format: Annotated[Literal["jsonl", "csv"], Query(description="jsonl (default) or csv")] = (
        "jsonl"
    ),
) -> StreamingResponse:
    lines = await _batches(request).results(org.id, batch_id, format)
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    name = f"batch-{batch_id}.{format}"
    return StreamingResponse(
        lines, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'}
    )


@router.post(
    "/v1/batches/{batch_id}/retry", status_code=202, response_model=BatchObject, responses=ERRORS
)
async def retry_batch(request: Request, org: Org, batch_id: str) -> JSONResponse:
    batch = await _batches(request).retry(org.id, batch_id)
    return JSONResponse(batch_object(batch).model_dump(), status_code=202)


@router.post("/v1/batches/{batch_id}/cancel", response_model=BatchObject, responses=ERRORS)
async def cancel_batch(request: Request, org: Org, batch_id: str) -> BatchObject:
    return batch_object(await _batches(request).cancel(org.id, batch_id))


@router.get(
    "/v1/batches/{batch_id}/events",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def batch_events(request: Request, org: Org, batch_id: str) -> StreamingResponse:
    events = await _batches(request).events(org.id, batch_id)

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in events:
                if await request.is_disconnected():
                    return
                yield _sse(event)
        finally:
            await events.aclose()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _sse(event: Event) -> str:
    if event.kind == "heartbeat":
        return ": keep-alive\n\n"
    return f"event: {event.kind}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n"
