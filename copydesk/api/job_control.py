"""Copydesk's own job routes (extensions, outside Writer's API): the job as Copydesk sees
it, and cancelling it.

- ``GET /v1/jobs/{job_id}``: the real status (``queued``, ``running``, ``completed``,
  ``failed`` or ``cancelled``), priority, attempts, and the batch row it came from.
- ``POST /v1/jobs/{job_id}/cancel``: a queued job never starts, a running one has its
  provider call aborted; the answer is the job view. Cancelling a finished job (or a
  cancelled one again) changes nothing and answers the job as it is, with 200: the
  caller reads ``status`` to see what happened.

Writer's own job routes (J2, J3) keep Writer's three statuses: ``cancelled`` is
``failed`` there (:func:`copydesk.jobs.wire_status`).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from copydesk.api import schemas
from copydesk.api.applications import ERRORS
from copydesk.api.auth import Org
from copydesk.backlog import Backlog, JobDetail

router = APIRouter(prefix="/v1/jobs", tags=["jobs (Copydesk extensions)"])


class JobView(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    writer_status: Literal["in_progress", "completed", "failed"] = Field(
        description="what Writer's endpoints show for this job"
    )
    application_id: str
    agent_version: int
    priority: int = Field(description="higher runs first; -100..100")
    batch_id: str | None = None
    row_index: int | None = None
    custom_id: str | None = None
    created_at: str
    updated_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    data: schemas.GenerateResponse | None = None
    error: str | None = None
    error_class: str | None = None
    attempts_made: int
    max_attempts: int
    usage: schemas.JobUsage
    attempts: list[schemas.AttemptOut]


def _backlog(request: Request) -> Backlog:
    backlog: Backlog = request.app.state.copydesk.backlog
    return backlog


def job_view(detail: JobDetail) -> JobView:
    job = detail.job
    writer = schemas.job_object(job, detail.attempts)
    return JobView(
        id=job.id,
        status=job.status,
        writer_status=writer.status,
        application_id=job.agent_id,
        agent_version=job.agent_version,
        priority=job.priority,
        # Batch rows (the batches extension); absent on stores without them.
        batch_id=getattr(job, "batch_id", None),
        row_index=getattr(job, "row_index", None),
        custom_id=getattr(job, "custom_id", None),
        created_at=writer.created_at,
        updated_at=writer.updated_at,
        started_at=schemas.iso(job.started_at),
        completed_at=writer.completed_at,
        data=writer.data,
        error=job.error if job.status in ("failed", "cancelled") else None,
        error_class=job.error_class if job.status in ("failed", "cancelled") else None,
        attempts_made=job.attempts,
        max_attempts=job.max_attempts,
        usage=writer.usage,
        attempts=writer.attempts or [],
    )


@router.get("/{job_id}", response_model=JobView, responses=ERRORS)
async def retrieve_job(request: Request, org: Org, job_id: str) -> JobView:
    return job_view(await _backlog(request).get(org.id, job_id))


@router.post("/{job_id}/cancel", response_model=JobView, responses=ERRORS)
async def cancel_job(request: Request, org: Org, job_id: str) -> JobView:
    return job_view(await _backlog(request).cancel(org.id, job_id))
