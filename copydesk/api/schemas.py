"""Wire shapes of Writer's API (field names copied exactly), for replies and OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from copydesk.store import Agent


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
