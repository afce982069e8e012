"""SQLAlchemy table definitions: the schema every migration must arrive at."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect

from copydesk.jobs import ACTIVE

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: A job still to run (``copydesk.jobs.ACTIVE``), as a partial index's predicate. A query
#: meant to use such an index says it in these words: SQLite uses a partial index only
#: when the query's WHERE holds the index's terms as written.
ACTIVE_SQL = "status IN ({})".format(", ".join(f"'{status}'" for status in ACTIVE))


def _where(predicate: str) -> dict[str, Any]:
    """A partial index's predicate, the same on both dialects."""
    return {"postgresql_where": text(predicate), "sqlite_where": text(predicate)}


# SQLite's INTEGER PRIMARY KEY is the rowid (auto-increment); PostgreSQL gets BIGINT identity.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # SQLite: the text SQLAlchemy's DATETIME stores ("YYYY-MM-DD HH:MM:SS.ffffff", UTC),
    # written and read by the C isoformat/fromisoformat in one step each, instead of the
    # two Python processors chained above (a quarter of a busy embedded worker's samples
    # went to datetimes: every claimed row returns six of them).

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _sqlite_text

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _sqlite_datetime


# Both conversions are cached: the times of a batch's rows are mostly the same few values
# (one claim's start and lease, one insert's creation time, one outcome batch's end), and a
# lookup costs a tenth of a conversion. Equal instants in other zones give the same UTC
# text, so keying the text by the datetime is exact; a naive one raises and is not cached.


@lru_cache(maxsize=4096)
def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # Always 26 characters before the offset: 4-digit year, microseconds even when 0.
    return value.isoformat(" ", "microseconds")[:26]


@lru_cache(maxsize=4096)
def _sqlite_datetime(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


organizations = Table(
    "organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("secret_hash", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

agents = Table(
    "agents",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("id", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("current_version", Integer, nullable=False),
    Column("graph_ids", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_deployed_at", UTCDateTime(), nullable=True),
    UniqueConstraint("org_id", "id"),
    Index("ix_agents_org_id_seq", "org_id", "seq"),
)

agent_versions = Table(
    "agent_versions",
    metadata,
    Column("agent_seq", SeqType, ForeignKey("agents.seq"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

generations = Table(
    "generations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("agent_id", String(100), nullable=False),
    Column("agent_version", Integer, nullable=False),
    Column("provider", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_generations_org_id_agent_id", "org_id", "agent_id"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("agent_id", String(100), nullable=False),
    Column("agent_version", Integer, nullable=False),
    Column("provider", String(100), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    # Position of the job in its organisation's backlog when it was queued: claiming the
    # lowest rank first serves organisations round-robin (fair sharing).
    Column("fair_rank", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("available_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(100), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("result_title", String(500), nullable=True),
    Column("result_suggestion", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_class", String(40), nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    # Batches (extension): the batch a job belongs to, its row there, the caller's id.
    Column("batch_id", String(36), nullable=True),
    Column("row_index", Integer, nullable=True),
    Column("custom_id", String(200), nullable=True),
    Index("ix_jobs_batch_id_row_index", "batch_id", "row_index"),
    # Whether a batch has jobs left to run (stores/completion.py): only its active rows.
    Index(
        "ix_jobs_batch_active",
        "batch_id",
        **_where(f"{ACTIVE_SQL} AND batch_id IS NOT NULL"),
    ),
    # J3: an application's jobs, newest first, with and without a status filter.
    Index("ix_jobs_org_id_agent_id_seq", "org_id", "agent_id", "seq"),
    Index("ix_jobs_org_id_agent_id_status_seq", "org_id", "agent_id", "status", "seq"),
    # The fair rank of a new job: its organisation's newest active rank (only active
    # rows: a finished job's row version is not written to it), and the lowest queued
    # rank overall.
    Index(
        "ix_jobs_active_org_id_fair_rank",
        "org_id",
        "fair_rank",
        **_where(ACTIVE_SQL),
    ),
    Index(
        "ix_jobs_queued_fair_rank",
        "fair_rank",
        **_where("status = 'queued'"),
    ),
    # Reaping expired leases: only running rows.
    Index(
        "ix_jobs_lease",
        "lease_expires_at",
        **_where("status = 'running'"),
    ),
)

# Claiming: only queued rows are indexed, in claim order (priority DESC, fair_rank, seq).
# With priority ascending, as it was, SQLite read the index for the priority only and
# sorted every queued row of the provider by (fair_rank, seq) in a temporary B-tree on
# each claim: at 20,000 queued jobs, most of a claim's cost.
Index(
    "ix_jobs_claim",
    jobs.c.provider,
    jobs.c.priority.desc(),
    jobs.c.fair_rank,
    jobs.c.seq,
    **_where("status = 'queued'"),
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_seq", SeqType, ForeignKey("jobs.seq"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("worker", String(100), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("outcome", String(20), nullable=False),
    Column("error_class", String(40), nullable=True),
    Column("error", Text, nullable=True),
    Column("provider_latency_ms", Integer, nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
)

# Shared flow control (PostgreSQL deployments): one row per request started in the last
# minute, per provider. See copydesk.limiters.postgres.
rate_events = Table(
    "rate_events",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("provider", String(100), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("tokens", Integer, nullable=False),
    Index("ix_rate_events_provider_at", "provider", "at"),
)

# Files (F1-F6): uploaded bytes live in a BlobStore under ``storage_key``; this row is the
# metadata and, once a worker processed a document, its extracted text.
files = Table(
    "files",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("name", String(500), nullable=False),
    Column("mime_type", String(200), nullable=False),
    Column("extension", String(16), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("storage_key", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("text", Text, nullable=True),
    Column("word_count", Integer, nullable=True),
    Column("graph_ids", JSON, nullable=False),
    # Set while a worker extracts the text; an expired lease (a dead worker) is claimed again.
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_files_org_id_seq", "org_id", "seq"),
    Index(
        "ix_files_pending",
        "seq",
        **_where("status = 'in_progress'"),
    ),
)

# Batches (extension): one row per submitted batch; its jobs carry ``batch_id``. Counts and
# token usage are not stored here: one GROUP BY over the batch's jobs gives them.
batches = Table(
    "batches",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("agent_id", String(100), nullable=False),
    Column("agent_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("cancelled_at", UTCDateTime(), nullable=True),
    Index("ix_batches_org_id_seq", "org_id", "seq"),
    Index("ix_batches_org_id_agent_id_seq", "org_id", "agent_id", "seq"),
)

# Idempotency keys (``Idempotency-Key`` on creates): the first request's answer, replayed
# for 24 h. The primary key is the uniqueness that decides which of concurrent duplicates
# runs; ``lease_*`` let a key held by a crashed request be taken over.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("org_id", String(36), ForeignKey("organizations.id"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=True),
    Column("state", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("response", JSON, nullable=True),
    Column("object_id", String(100), nullable=True),
    Column("lease_owner", String(36), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

# Webhooks: an organisation's endpoints, and the durable outbox of deliveries (one row per
# event and subscribed endpoint, written in the transaction of the state change).
webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("org_id", String(36), ForeignKey("organizations.id"), nullable=False),
    Column("url", String(2000), nullable=False),
    # Subscribed event types, comma-separated ("job.completed,job.failed").
    Column("events", String(200), nullable=False),
    Column("description", String(500), nullable=True),
    Column("secret", String(100), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_webhook_endpoints_org_id_seq", "org_id", "seq"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    # The message id (``webhook-id``): the same for every endpoint and every attempt.
    Column("event_id", String(36), nullable=False),
    Column("endpoint_id", String(36), ForeignKey("webhook_endpoints.id"), nullable=False),
    Column("org_id", String(36), nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    # NULL: the configured number; a redelivery sets attempts + that number.
    Column("max_attempts", Integer, nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    UniqueConstraint("endpoint_id", "event_id"),
    Index("ix_webhook_deliveries_endpoint_id_seq", "endpoint_id", "seq"),
    # Claiming: only pending rows, soonest first.
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        **_where("status = 'pending'"),
    ),
)
