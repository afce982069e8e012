"""The ``Store`` port: what the services need from a database, and the records it returns.

Implementations live in :mod:`copydesk.stores`; a contract suite runs against each.
Every read and write is scoped by organisation: an id of another organisation is
indistinguishable from one that does not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

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

    async def find_api_key_with_org(
        self, prefix: str
    ) -> tuple[ApiKey, Organization | None] | None: ...

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]: ...

    async def revoke_api_key(self, key_id: str) -> ApiKey | None: ...

    async def count_api_keys(self) -> int: ...

    # agents
    async def deploy_agent(self, org_id: str, spec: AgentSpec) -> Agent:
        """Store ``spec`` (which has an id) as a new immutable version, status deployed."""
        ...

    async def get_agent(
        self, org_id: str, agent_id: str, version: int | None = None
    ) -> Agent | None: ...

    async def list_agents(self, org_id: str, query: CursorQuery) -> CursorPage[Agent]: ...

    async def set_agent_graphs(
        self, org_id: str, agent_id: str, graph_ids: list[str]
    ) -> list[str] | None:
        """Replace the agent's graph list; ``None`` when the agent does not exist."""
        ...

    # generations (token usage of synchronous calls)
    async def record_generation(self, record: GenerationRecord) -> None: ...

    async def list_generations(self, org_id: str, agent_id: str) -> list[GenerationRecord]: ...


# --- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """A validated job, ready to be stored and queued."""

    id: str
    org_id: str
    agent_id: str
    agent_version: int
    provider: str
    inputs: list[dict[str, object]]
    max_attempts: int
    priority: int = 0


@dataclass(frozen=True)
class Attempt:
    number: int
    worker: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str  # completed | retry | failed | cancelled | lease_expired | released
    error_class: str | None = None
    error: str | None = None
    provider_latency_ms: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Job:
    id: str
    org_id: str
    agent_id: str
    agent_version: int
    provider: str
    inputs: list[dict[str, object]]
    status: str
    priority: int
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    result_title: str | None = None
    result_suggestion: str | None = None
    error: str | None = None
    error_class: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fair_rank: int = 0


@dataclass(frozen=True)
class JobPage:
    items: list[Job]
    total: int


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt, to be written once (see :meth:`JobStore.finish_attempts`).

    ``kind``: ``completed`` writes the result; ``retry`` puts the job back in the queue at
    ``available_at``; ``failed`` ends it with ``error``. Each applies only while the job is
    still running under the same lease (owner and attempt number), except ``completed``,
    which applies to any job not yet finished: the first result wins, later ones are dropped.
    ``cancelled`` changes no job: it records the end of an attempt whose job was cancelled
    (see :meth:`JobStore.cancel_jobs`). No outcome ever moves a cancelled job.
    """

    job_id: str
    kind: str
    owner: str
    attempt: int
    started_at: datetime
    ended_at: datetime
    title: str | None = None
    suggestion: str | None = None
    error: str | None = None
    error_class: str | None = None
    available_at: datetime | None = None
    provider_latency_ms: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class JobStore(Protocol):
    """Durable job records: the API reads them, the engines move them along."""

    async def create_jobs(
        self, jobs: list[NewJob], enqueue: EnqueueHook | None = None
    ) -> list[Job]:
        """Store jobs (status queued); ``enqueue`` runs in the same transaction."""
        ...

    async def get_job(self, org_id: str | None, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, org_id: str, agent_id: str, statuses: tuple[str, ...] | None, offset: int, limit: int
    ) -> JobPage: ...

    async def list_attempts(self, job_id: str) -> list[Attempt]: ...

    async def get_job_detail(
        self, org_id: str | None, job_id: str
    ) -> tuple[Job, list[Attempt]] | None:
        """A job and its attempts, read together."""
        ...

    async def claim_jobs(self, provider: str, limit: int, owner: str, lease_s: float) -> list[Job]:
        """Take up to ``limit`` runnable jobs of ``provider`` (queued and due, or running
        with an expired lease), fairest first; mark them running under ``owner``."""
        ...

    async def start_jobs(self, job_ids: list[str], owner: str, lease_s: float) -> list[Job]:
        """:meth:`start_job` for a batch, in one transaction; skipped ids are left out."""
        ...

    async def start_job(self, job_id: str, owner: str, lease_s: float) -> Job | None:
        """Mark one job running under ``owner`` unless it has finished; None if finished."""
        ...

    async def renew_leases(self, owner: str, job_ids: list[str], lease_s: float) -> int: ...

    async def unstart_jobs(
        self, owner: str, job_ids: list[str], enqueue: EnqueueHook | None = None
    ) -> int:
        """Queue again started jobs that never reached the provider (no attempt used)."""
        ...

    async def release_jobs(
        self, owner: str, job_ids: list[str], enqueue: EnqueueHook | None = None
    ) -> int:
        """Give running jobs back to the queue (graceful shutdown)."""
        ...

    async def reap_expired(
        self, enqueue: EnqueueHook | None = None, limit: int = 1000, grace_s: float = 0.0
    ) -> list[Job]:
        """Put running jobs whose lease expired more than ``grace_s`` ago back in the
        queue (their worker died)."""
        ...

    async def finish_attempts(
        self, outcomes: list[Outcome], enqueue: EnqueueHook | None = None
    ) -> list[bool]:
        """Write attempt ends in one transaction; True where the job's state changed.
        ``enqueue`` receives the jobs put back in the queue (retries), in that transaction."""
        ...

    async def retry_job(
        self, org_id: str, job_id: str, extra_attempts: int, enqueue: EnqueueHook | None = None
    ) -> Job:
        """Put a failed job back in the queue under the same id, allowing
        ``extra_attempts`` more attempts (raises JobNotRetryable if it has not failed)."""
        ...

    async def next_due(self, provider: str) -> datetime | None:
        """When the earliest queued job of ``provider`` becomes due (None: nothing queued)."""
        ...

    async def cancel_jobs(self, org_id: str | None, job_ids: list[str]) -> list[Job]:
        """Mark the jobs among ``job_ids`` (of ``org_id`` unless None) that are queued or
        running ``cancelled``, in one statement; the jobs it changed. Finished jobs are
        left as they are, so cancelling twice changes nothing the second time."""
        ...

    async def cancelled_among(self, job_ids: list[str]) -> list[str]:
        """The ids among ``job_ids`` whose job is cancelled (a worker's in-flight check)."""
        ...

    async def active_providers(self) -> list[str]: ...


#: Called inside the transaction that stores jobs: the queue engine adds its entries there.
EnqueueHook = Callable[[Any, list[Job]], Awaitable[None]]
#: Called inside the transaction that stores (or retries) files waiting to be processed,
#: with their ids: an engine that dispatches file processing adds its entries there.
FileHook = Callable[[Any, list[str]], Awaitable[None]]


# --- files --------------------------------------------------------------------------------

FileStatus = Literal["in_progress", "completed", "failed"]


@dataclass(frozen=True)
class NewFile:
    """An uploaded file whose bytes are already stored under ``storage_key``."""

    id: str
    org_id: str
    name: str
    mime_type: str
    extension: str
    size_bytes: int
    sha256: str
    storage_key: str
    status: FileStatus
    graph_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StoredFile:
    id: str
    org_id: str
    name: str
    mime_type: str
    extension: str
    size_bytes: int
    sha256: str
    storage_key: str
    status: str
    created_at: datetime
    updated_at: datetime
    graph_ids: list[str] = field(default_factory=list)
    error: str | None = None
    text: str | None = None
    word_count: int | None = None


@dataclass(frozen=True)
class FileQuery:
    """F3's filters; ``file_types`` are extensions without the dot, lower case."""

    cursor: CursorQuery = field(default_factory=CursorQuery)
    status: str | None = None
    file_types: tuple[str, ...] = ()
    graph_id: str | None = None


class FileStore(Protocol):
    """File metadata and extracted text; the bytes live in a :class:`BlobStore`."""

    async def create_file(self, new: NewFile, dispatch: FileHook | None = None) -> StoredFile:
        """Store a file; ``dispatch`` is called in the same transaction when it waits to be
        processed (``in_progress``)."""
        ...

    async def get_file(self, org_id: str, file_id: str) -> StoredFile | None: ...

    async def list_files(self, org_id: str, query: FileQuery) -> CursorPage[StoredFile]: ...

    async def delete_file(self, org_id: str, file_id: str) -> StoredFile | None:
        """Remove the row; the removed file (to delete its bytes), None if unknown."""
        ...

    async def claim_files(
        self, limit: int, lease_s: float, idle_s: float = 0.0
    ) -> list[StoredFile]:
        """Take up to ``limit`` files waiting to be processed (``in_progress`` and not held
        by a live worker), oldest first, under a lease of ``lease_s``; with ``idle_s``,
        only files left untouched for at least that long."""
        ...

    async def claim_file(self, file_id: str, lease_s: float) -> StoredFile | None:
        """Take this one file under a lease of ``lease_s`` if it waits to be processed
        (``in_progress``, not held by a live worker); None otherwise."""
        ...

    async def set_processed(
        self,
        file_id: str,
        status: FileStatus,
        text: str | None = None,
        word_count: int | None = None,
        error: str | None = None,
    ) -> StoredFile | None:
        """Record the end of processing and release the lease."""
        ...

    async def retry_files(
        self, org_id: str, file_ids: list[str], dispatch: FileHook | None = None
    ) -> list[StoredFile]:
        """Put failed files back to ``in_progress``, all or none (``dispatch`` is called in
        the same transaction). Raises FileNotFound for an unknown id and FileNotRetryable
        for a file that has not failed."""
        ...


# --- idempotency keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class IdempotencyRecord:
    """What a key holds: a request in flight (``state`` in_flight, under a lease) or the
    answer it gave (``done``). ``fingerprint`` is None while a streamed body is being read."""

    org_id: str
    key: str
    fingerprint: str | None
    state: Literal["in_flight", "done"]
    created_at: datetime
    expires_at: datetime
    lease_expires_at: datetime | None = None
    status_code: int | None = None
    response: Any = None
    object_id: str | None = None


class IdempotencyStore(Protocol):
    """Idempotency keys, unique per (organisation, key); the unique insert picks the winner."""

    async def claim_key(
        self,
        org_id: str,
        key: str,
        fingerprint: str | None,
        owner: str,
        lease_s: float,
        ttl_s: float,
    ) -> IdempotencyRecord | None:
        """Hold ``key`` for ``owner`` (a new key, one past its expiry, or one whose holder's
        lease ran out): None. Otherwise the record that holds it."""
        ...

    async def get_key(self, org_id: str, key: str) -> IdempotencyRecord | None: ...

    async def renew_key(self, org_id: str, key: str, owner: str, lease_s: float) -> bool: ...

    async def complete_key(
        self,
        org_id: str,
        key: str,
        owner: str,
        fingerprint: str,
        status_code: int,
        response: Any,
        object_id: str | None,
    ) -> bool:
        """Store the answer (state done) if ``owner`` still holds the key."""
        ...

    async def release_key(self, org_id: str, key: str, owner: str) -> None:
        """Forget a key ``owner`` holds in flight (its request failed: nothing to replay)."""
        ...

    async def purge_keys(self, limit: int = 10_000) -> int:
        """Delete up to ``limit`` keys past their expiry; how many."""
        ...
