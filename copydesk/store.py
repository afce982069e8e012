"""The ``Store`` port: what the services need from a database, and the records it returns.

Implementations live in :mod:`copydesk.stores`; a contract suite runs against each.
Every read and write is scoped by organisation: an id of another organisation is
indistinguishable from one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, Protocol, TypeVar

from copydesk.agents import AgentSpec

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class Organization:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    org_id: str
    name: str
    prefix: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class Agent:
    """An agent at one deployed version (the current one unless asked otherwise)."""

    id: str
    org_id: str
    name: str
    status: Literal["deployed", "draft"]
    version: int
    spec: AgentSpec
    created_at: datetime
    updated_at: datetime
    last_deployed_at: datetime | None
    graph_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationRecord:
    id: str
    org_id: str
    agent_id: str
    agent_version: int
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    streamed: bool
    created_at: datetime


@dataclass(frozen=True)
class CursorPage(Generic[T]):
    items: list[T]
    has_more: bool


@dataclass(frozen=True)
class CursorQuery:
    limit: int = 50
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


class Store(Protocol):
    """Persistence for organisations, keys, agents and generations."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # organisations and keys
    async def create_organization(self, name: str) -> Organization: ...

    async def get_organization_by_name(self, name: str) -> Organization | None: ...

    async def get_organization(self, org_id: str) -> Organization | None: ...

    async def list_organizations(self) -> list[Organization]: ...

    async def create_api_key(
        self, org_id: str, name: str, prefix: str, secret_hash: str
    ) -> ApiKey: ...

    async def find_api_key(self, prefix: str) -> ApiKey | None: ...

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]: ...

    async def revoke_api_key(self, key_id: str) -> ApiKey | None: ...

    async def count_api_keys(self) -> int: ...

    # agents
    async def deploy_agent(self, org_id: str, spec: AgentSpec) -> Agent:
        """Store ``spec`` (which has an id) as a new immutable version, status deployed."""
        ...

    async def get_agent(self, org_id: str, agent_id: str, version: int | None = None) -> Agent | None:
        ...

    async def list_agents(self, org_id: str, query: CursorQuery) -> CursorPage[Agent]: ...

    async def set_agent_graphs(
        self, org_id: str, agent_id: str, graph_ids: list[str]
    ) -> list[str] | None:
        """Replace the agent's graph list; ``None`` when the agent does not exist."""
        ...

    # generations (token usage of synchronous calls)
    async def record_generation(self, record: GenerationRecord) -> None: ...

    async def list_generations(self, org_id: str, agent_id: str) -> list[GenerationRecord]: ...
