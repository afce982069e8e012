"""Routes J1 to J4: thin handlers over the backlog.

Registered before the applications routes: ``/v1/applications/jobs/{job_id}`` has the
same shape as ``/v1/applications/{application_id}/jobs``, so ``jobs`` is reserved.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from copydesk.api import schemas
from copydesk.api.applications import ERRORS
from copydesk.api.auth import Org
from copydesk.api.idempotency import Idempotent
from copydesk.backlog import Backlog

router = APIRouter(prefix="/v1/applications", tags=["jobs"])


def _backlog(request: Request) -> Backlog:
    backlog: Backlog = request.app.state.copydesk.backlog
    return backlog


@router.get("/jobs/{job_id}", response_model=schemas.JobObject, responses=ERRORS)
async def retrieve_job(request: Request, org: Org, job_id: str) -> schemas.JobObject:
    detail = await _backlog(request).get(org.id, job_id)
    return schemas.job_object(detail.job, detail.attempts)


@router.post(
    "/jobs/{job_id}/retry", status_code=202, response_model=schemas.JobCreated, responses=ERRORS
)
async def retry_job(request: Request, org: Org, job_id: str, idem: Idempotent) -> JSONResponse:
    async def retry() -> JSONResponse:
        job = await _backlog(request).retry(org.id, job_id)
        return JSONResponse(schemas.job_created(job).model_dump(), status_code=202)

    return await idem.respond(retry)


@router.post(
    "/{application_id}/jobs",
    status_code=202,
    response_model=schemas.JobCreated,
    responses=ERRORS,
)
async def create_job(
    request: Request,
    org: Org,
    application_id: str,
    body: schemas.JobCreateRequest,
    idem: Idempotent,
) -> JSONResponse:
    async def submit() -> JSONResponse:
        raw = [i.model_dump() for i in body.inputs]
        job = await _backlog(request).submit(org.id, application_id, raw, priority=body.priority)
        return JSONResponse(schemas.job_created(job).model_dump(), status_code=202)

    return await idem.respond(submit)


@router.get("/{application_id}/jobs", response_model=schemas.JobList, responses=ERRORS)
async def list_jobs(
    request: Request,
    org: Org,
    application_id: str,
    status: Literal["in_progress", "failed", "completed"] | None = None,
    offset: Annotated[int, Query(description="rows to skip; default 0")] = 0,
    limit: Annotated[int, Query(description="page size; default 50, at most 500")] = 50,
) -> JSONResponse:
    page = await _backlog(request).page(org.id, application_id, status, offset, limit)
    body = schemas.JobList(
        result=[schemas.job_object(j) for j in page.items],
        total_count=page.total,
        pagination=schemas.Pagination(offset=offset, limit=limit),
    )
    return JSONResponse(
        body.model_dump(by_alias=True, exclude={"result": {"__all__": {"attempts"}}})
    )
