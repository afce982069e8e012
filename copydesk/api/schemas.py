"""Wire shapes of Writer's API (field names copied exactly), for replies and OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from copydesk.jobs import wire_status
from copydesk.store import Agent, Attempt, Job, StoredFile


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ErrorMessage(BaseModel):
    description: str
    key: str
    extras: dict[str, Any]


class ErrorObject(BaseModel):
    tpe: str
    errors: list[ErrorMessage]
    extras: dict[str, Any]


class ApplicationInput(BaseModel):
    name: str
    input_type: Literal["text", "dropdown", "file", "media"]
    required: bool
    description: str | None = None
    options: dict[str, Any] | None = None


class Application(BaseModel):
    id: str
    name: str
    type: Literal["generation"] = "generation"
    status: Literal["deployed", "draft"]
    inputs: list[ApplicationInput]
    created_at: str
    updated_at: str
    last_deployed_at: str | None = None
    version: int = Field(description="Copydesk extension: the deployed version number")
    description: str | None = Field(default=None, description="Copydesk extension")


class ApplicationList(BaseModel):
    data: list[Application]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class GenerateInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="the input's name, as in the application's inputs[].name")
    value: list[str]


class GenerateRequest(BaseModel):
    inputs: list[GenerateInput]
    stream: bool = False


class GenerateResponse(BaseModel):
    title: str | None = None
    suggestion: str


class GraphIds(BaseModel):
    graph_ids: list[str]


def application(agent: Agent) -> Application:
    return Application(
        id=agent.id,
        name=agent.name,
        status=agent.status,
        inputs=[
            ApplicationInput(
                name=i.name,
                input_type=i.input_type,
                required=i.required,
                description=i.description,
                options=i.options.model_dump(mode="json") if i.options is not None else None,
            )
            for i in agent.spec.inputs
        ],
        created_at=iso(agent.created_at) or "",
        updated_at=iso(agent.updated_at) or "",
        last_deployed_at=iso(agent.last_deployed_at),
        version=agent.version,
        description=agent.spec.description,
    )


class JobCreateRequest(BaseModel):
    inputs: list[GenerateInput]
    # Copydesk extension (writer-sdk: ``extra_body={"priority": 5}``)
    priority: StrictInt | None = Field(
        default=None, description="-100..100, higher runs first; default 0 (batch rows: -1)"
    )


class JobCreated(BaseModel):
    id: str
    status: Literal["in_progress", "failed", "completed"]
    created_at: str


class AttemptOut(BaseModel):
    number: int
    worker: str
    started_at: str | None
    ended_at: str | None
    outcome: str
    error_class: str | None = None
    error: str | None = None
    provider_latency_ms: int | None = None


class JobUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class JobObject(BaseModel):
    id: str
    status: Literal["in_progress", "failed", "completed"]
    application_id: str
    created_at: str
    updated_at: str | None = None
    completed_at: str | None = None
    data: GenerateResponse | None = None
    error: str | None = None
    # Copydesk extensions (extra keys; strict SDK clients accept them)
    copydesk_status: str = Field(description="queued, running, completed, failed or cancelled")
    agent_version: int
    attempts_made: int
    usage: JobUsage
    attempts: list[AttemptOut] | None = Field(
        default=None, description="every attempt (single-job reads only)"
    )


class Pagination(BaseModel):
    offset: int
    limit: int


class JobList(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    result: list[JobObject]
    total_count: int = Field(serialization_alias="totalCount", alias="totalCount")
    pagination: Pagination


def job_created(job: Job) -> JobCreated:
    return JobCreated(
        id=job.id, status=wire_status(job.status), created_at=iso(job.created_at) or ""
    )


def job_object(job: Job, attempts: list[Attempt] | None = None) -> JobObject:
    data = None
    if job.status == "completed":
        data = GenerateResponse(title=job.result_title, suggestion=job.result_suggestion or "")
    error = job.error if job.status in ("failed", "cancelled") else None
    if job.status == "cancelled" and not error:
        error = "cancelled"
    return JobObject(
        id=job.id,
        status=wire_status(job.status),
        application_id=job.agent_id,
        created_at=iso(job.created_at) or "",
        updated_at=iso(job.updated_at),
        completed_at=iso(job.completed_at),
        data=data,
        error=error,
        copydesk_status=job.status,
        agent_version=job.agent_version,
        attempts_made=job.attempts,
        usage=JobUsage(prompt_tokens=job.prompt_tokens, completion_tokens=job.completion_tokens),
        attempts=None
        if attempts is None
        else [
            AttemptOut(
                number=a.number,
                worker=a.worker,
                started_at=iso(a.started_at),
                ended_at=iso(a.ended_at),
                outcome=a.outcome,
                error_class=a.error_class,
                error=a.error,
                provider_latency_ms=a.provider_latency_ms,
            )
            for a in attempts
        ],
    )


# --- files (F1-F6) ------------------------------------------------------------------


class FileObject(BaseModel):
    """``file_response``: Writer's five fields, then Copydesk's extensions."""

    id: str
    created_at: str
    name: str
    graph_ids: list[str]
    status: Literal["in_progress", "completed", "failed"]
    mime_type: str = Field(description="Copydesk extension: the type decided at upload")
    size_bytes: int = Field(description="Copydesk extension")
    word_count: int | None = Field(
        default=None, description="Copydesk extension: words of the extracted text"
    )
    error: str | None = Field(default=None, description="Copydesk extension: why it failed")


class FileList(BaseModel):
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    deleted: bool


class FileRetryRequest(BaseModel):
    file_ids: list[str]


class FileRetried(BaseModel):
    success: bool


def file_object(file: StoredFile, *, uploaded: bool = False) -> FileObject:
    status = file.status if file.status in ("in_progress", "completed", "failed") else "failed"
    return FileObject(
        id=file.id,
        created_at=iso(file.created_at) or "",
        name=file.name,
        # Writer's upload response always has [] (later reads show the association).
        graph_ids=[] if uploaded else list(file.graph_ids),
        status=status,
        mime_type=file.mime_type,
        size_bytes=file.size_bytes,
        word_count=file.word_count,
        error=file.error,
    )
