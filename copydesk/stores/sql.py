"""The SQLAlchemy store: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) when configured.

All SQL of Copydesk lives here. The services are the only callers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    Select,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    column,
    delete,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from copydesk import webhooks
from copydesk.agents import AgentSpec
from copydesk.errors import FileNotFound, FileNotRetryable, JobNotFound, JobNotRetryable
from copydesk.jobs import ACTIVE, CANCELLED_ERROR, wire_status
from copydesk.store import (
    Agent,
    ApiKey,
    Attempt,
    CursorPage,
    CursorQuery,
    EnqueueHook,
    FileHook,
    FileQuery,
    FileStatus,
    GenerationRecord,
    Job,
    JobPage,
    NewFile,
    NewJob,
    Organization,
    Outcome,
    StoredFile,
)
from copydesk.stores import outbox, sqlite_driver
from copydesk.stores.completion import complete_batches
from copydesk.stores.outbox import has_endpoints
from copydesk.stores.tables import (
    ACTIVE_SQL,
    UTCDateTime,
    agent_versions,
    agents,
    api_keys,
    files,
    generations,
    job_attempts,
    jobs,
    organizations,
)

#: Attempt outcomes that changed their job, or ended with it cancelled (the others:
#: lease_expired, released, *_dropped).
_APPLIED = ("completed", "retry", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


#: Set while a task holds the SQLite writer lock (so its nested transactions go through).
_HOLDS_WRITER: ContextVar[bool] = ContextVar("copydesk_holds_sqlite_writer", default=False)
#: Set while a task is in a SQLite read transaction (so its nested ones do not queue).
_HOLDS_READER: ContextVar[bool] = ContextVar("copydesk_holds_sqlite_reader", default=False)
#: SQLite read transactions under way at once per process (see ``SQLStore._read``).
SQLITE_READERS = 2


def queued_row(j: NewJob, fair_rank: int, now: datetime) -> dict[str, Any]:
    """The jobs-table row of a newly accepted job (J1 and batch rows alike)."""
    return {
        "id": j.id,
        "org_id": j.org_id,
        "agent_id": j.agent_id,
        "agent_version": j.agent_version,
        "provider": j.provider,
        "inputs": j.inputs,
        "status": "queued",
        "priority": j.priority,
        "fair_rank": fair_rank,
        "attempts": 0,
        "max_attempts": j.max_attempts,
        "available_at": now,
        "created_at": now,
        "updated_at": now,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }


def requeued(now: datetime, max_attempts: Any) -> dict[str, Any]:
    """The values that queue a failed (or cancelled) job again under the same id, with a
    fresh allowance of attempts (J4 and a batch's retry of its failed rows alike)."""
    return {
        "status": "queued",
        "error": None,
        "error_class": None,
        "completed_at": None,
        "available_at": now,
        "updated_at": now,
        "max_attempts": max_attempts,
    }


async def insert_jobs(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert job rows (dicts with the same keys). On PostgreSQL, as one array per column
    through ``unnest``: a multi-row VALUES binds every value as a parameter of its own,
    which cost this process ~2x the CPU for 1,000 rows, and the server more."""
    if conn.dialect.name != "postgresql" or len(rows) < 2:
        await conn.execute(insert(jobs), rows)
        return
    await conn.execute(*_unnest_insert(jobs, rows, conn.dialect))


#: ``_unnest_insert``'s statements, per (table, columns, what follows the rows).
_UNNEST_INSERTS: dict[tuple[str, tuple[str, ...], str], Any] = {}


def _unnest_insert(
    table: Table, rows: list[dict[str, Any]], dialect: Any, tail: str = ""
) -> tuple[Any, dict[str, list[Any]]]:
    """PostgreSQL: ``INSERT INTO table (...) SELECT * FROM unnest(arrays) tail`` for
    ``rows`` (dicts with the same keys), and its parameters: one array per column, so the
    statement is one whatever the number of rows. JSON values are sent as text."""
    names = tuple(rows[0])
    key = (table.name, names, tail)
    statement = _UNNEST_INSERTS.get(key)
    if statement is None:
        arrays = ", ".join(
            f"CAST(:u_{name} AS {table.c[name].type.compile(dialect=dialect)}[])" for name in names
        )
        # Names and types are the table's own (``table.c[name]`` refuses any other name);
        # every value is a bound parameter.
        statement = _UNNEST_INSERTS[key] = text(
            f"INSERT INTO {table.name} ({', '.join(names)}) "  # noqa: S608 - see above
            f"SELECT * FROM unnest({arrays}) {tail}"
        )
    params: dict[str, list[Any]] = {}
    for name in names:
        values = [row[name] for row in rows]
        if isinstance(table.c[name].type, JSON):
            values = [json.dumps(value) for value in values]
        params[f"u_{name}"] = values
    return statement, params


async def _executemany(conn: AsyncConnection, statement: Any, rows: list[dict[str, Any]]) -> None:
    """``conn.execute(statement, rows)`` for a prebuilt statement. On SQLite the rows go
    straight to the driver's ``executemany`` as tuples, converted by the statement's own
    bind processors: SQLAlchemy's per-row parameter handling cost more of the worker's
    event loop than SQLite's work on the same rows (``bench.record_floor``)."""
    if conn.dialect.name != "sqlite" or len(rows) < 2:
        await conn.execute(statement, rows)
        return
    sql, order = _compiled_sqlite(statement, conn.dialect)
    values = [
        tuple(
            row.get(name, default) if process is None else process(row.get(name, default))
            for name, default, process in order
        )
        for row in rows
    ]
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None  # an open connection
    await driver.executemany(sql, values)


#: ``_compiled_sqlite``'s results, per (prebuilt, so never freed) statement.
_SQLITE_COMPILED: dict[Any, tuple[str, list[tuple[str, Any, Any]]]] = {}


def _compiled_sqlite(statement: Any, dialect: Any) -> tuple[str, list[tuple[str, Any, Any]]]:
    """A prebuilt statement's SQLite text, and for each ``?`` in it: the parameter's name,
    its value when the statement carries one, and its bind processor (or None)."""
    cached = _SQLITE_COMPILED.get(statement)
    if cached is None:
        compiled = statement.compile(dialect=dialect)
        if compiled.post_compile_params:  # an expanding IN: its text depends on the rows
            raise ValueError("_executemany takes statements without expanding parameters")
        processors = compiled._bind_processors
        order = [
            (name, compiled.params.get(name), processors.get(name)) for name in compiled.positiontup
        ]
        cached = _SQLITE_COMPILED[statement] = (compiled.string, order)
    return cached


async def count_and_page(
    conn: AsyncConnection, conditions: list[Any], order: Any, offset: int, limit: int
) -> tuple[Sequence[Row[Any]], int]:
    """One offset page of jobs matching ``conditions`` and how many match in all."""
    total = int(
        (await conn.execute(select(func.count()).select_from(jobs).where(*conditions))).scalar_one()
    )
    rows = (
        await conn.execute(
            select(jobs).where(*conditions).order_by(order).offset(offset).limit(limit)
        )
    ).all()
    return rows, total


#: Statements of the worker's hot paths, built once per (dialect, name) with bound
#: parameters: building them per call cost CPU and left cyclic garbage (bind parameters,
#: array types, subqueries) that made the collector's young passes 25-125 ms long.
_PREBUILT: dict[tuple[str, str], Any] = {}


def new_id() -> str:
    return str(uuid.uuid4())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for ``url`` with the settings each dialect needs."""
    if url.startswith("sqlite"):
        # One hand-off to aiosqlite's thread per statement (stores/sqlite_driver.py).
        connect_args = {"timeout": 30, "async_creator_fn": sqlite_driver.connect}
        engine = create_async_engine(url, connect_args=connect_args)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping (a round trip per checkout, 7 % of a busy worker): a connection that
    # died with a server restart fails one statement, is invalidated, and the loops retry.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


class SQLStore:
    """``Store`` over SQLAlchemy Core. Give it a URL (it owns the engine) or an engine."""

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        self.url = url
        self._engine = engine
        self._owns_engine = engine is None
        self._writer: asyncio.Lock | None = None
        self._readers: asyncio.Semaphore | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open: use `async with app` or await store.open()")
        return self._engine

    async def open(self) -> None:
        if self._engine is None:
            self._engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            self._writer = asyncio.Lock()
            self._readers = asyncio.Semaphore(SQLITE_READERS)

    async def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that may write. On SQLite, one at a time per process: SQLite has
        one writer, and concurrent deferred transactions that upgrade to writing would
        meet SQLITE_BUSY and sleep in its busy handler (10-100 ms each), which made a
        loaded server's p99 seconds long. Nested use in one task does not wait on itself.
        Other processes still queue on the database lock (``busy_timeout``)."""
        async with self._begin(self._writer, _HOLDS_WRITER, _HOLDS_WRITER.get()) as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction: never waits for the writer (WAL readers see the last
        committed state while a write is under way). On SQLite at most
        :data:`SQLITE_READERS` run at once per process: each connection works on a thread of
        its own (aiosqlite), and many of them busy at once contended for the GIL (32
        concurrent key lookups: 894-978 a second with 15 connections, 1,531-1,662 with 2).
        A task already holding a connection (a read, or the writer) never queues here, so
        a nested read cannot wait on its own task."""
        nested = _HOLDS_READER.get() or _HOLDS_WRITER.get()
        async with self._begin(self._readers, _HOLDS_READER, nested) as conn:
            yield conn

    @asynccontextmanager
    async def _begin(
        self, gate: asyncio.Lock | asyncio.Semaphore | None, holds: ContextVar[bool], nested: bool
    ) -> AsyncIterator[AsyncConnection]:
        """A transaction taken through ``gate`` (SQLite's writer lock or reader slots;
        none on PostgreSQL), marking the task as holding it in ``holds`` meanwhile. A
        ``nested`` one, in a task that already holds a connection, goes straight through."""
        if gate is None or nested:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with gate:
            token = holds.set(True)
            try:
                async with self.engine.begin() as conn:
                    yield conn
            finally:
                holds.reset(token)

    # --- organisations and keys -----------------------------------------------------

    async def create_organization(self, name: str) -> Organization:
        org = Organization(id=new_id(), name=name, created_at=utcnow())
        async with self._tx() as conn:
            await conn.execute(
                insert(organizations).values(id=org.id, name=org.name, created_at=org.created_at)
            )
        return org

    async def get_organization_by_name(self, name: str) -> Organization | None:
        async with self._read() as conn:
            row = (
                await conn.execute(select(organizations).where(organizations.c.name == name))
            ).first()
        return Organization(row.id, row.name, row.created_at) if row else None

    async def get_organization(self, org_id: str) -> Organization | None:
        async with self._read() as conn:
            row = (
                await conn.execute(select(organizations).where(organizations.c.id == org_id))
            ).first()
        return Organization(row.id, row.name, row.created_at) if row else None

    async def list_organizations(self) -> list[Organization]:
        async with self._read() as conn:
            rows = (
                await conn.execute(select(organizations).order_by(organizations.c.created_at))
            ).all()
        return [Organization(r.id, r.name, r.created_at) for r in rows]

    async def create_api_key(self, org_id: str, name: str, prefix: str, secret_hash: str) -> ApiKey:
        key = ApiKey(
            id=new_id(),
            org_id=org_id,
            name=name,
            prefix=prefix,
            secret_hash=secret_hash,
            created_at=utcnow(),
        )
        async with self._tx() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    org_id=org_id,
                    name=name,
                    prefix=prefix,
                    secret_hash=secret_hash,
                    created_at=key.created_at,
                )
            )
        return key

    async def find_api_key(self, prefix: str) -> ApiKey | None:
        found = await self.find_api_key_with_org(prefix)
        return found[0] if found else None

    async def find_api_key_with_org(self, prefix: str) -> tuple[ApiKey, Organization | None] | None:
        """The key and its organisation in one statement (every request's check)."""
        stmt = (
            select(
                api_keys,
                organizations.c.name.label("org_name"),
                organizations.c.created_at.label("org_created_at"),
            )
            .outerjoin(organizations, organizations.c.id == api_keys.c.org_id)
            .where(api_keys.c.prefix == prefix)
        )
        async with self._read() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        org = (
            Organization(row.org_id, row.org_name, row.org_created_at)
            if row.org_name is not None
            else None
        )
        return _api_key(row), org

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        stmt = select(api_keys).order_by(api_keys.c.created_at)
        if org_id is not None:
            stmt = stmt.where(api_keys.c.org_id == org_id)
        async with self._read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKey | None:
        async with self._tx() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _api_key(row) if row else None

    async def count_api_keys(self) -> int:
        async with self._read() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(api_keys))).scalar_one()
            )

    # --- agents ------------------------------------------------------------------------

    async def deploy_agent(self, org_id: str, spec: AgentSpec) -> Agent:
        if spec.id is None:
            raise ValueError("deploy_agent needs a spec with an id")
        now = utcnow()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(agents.c.seq, agents.c.current_version)
                    .where(agents.c.org_id == org_id, agents.c.id == spec.id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                seq = (
                    await conn.execute(
                        insert(agents)
                        .values(
                            org_id=org_id,
                            id=spec.id,
                            name=spec.name,
                            status="deployed",
                            current_version=1,
                            graph_ids=[],
                            created_at=now,
                            updated_at=now,
                            last_deployed_at=now,
                        )
                        .returning(agents.c.seq)
                    )
                ).scalar_one()
                version = 1
            else:
                seq, version = row.seq, row.current_version + 1
                await conn.execute(
                    update(agents)
                    .where(agents.c.seq == seq)
                    .values(
                        name=spec.name,
                        status="deployed",
                        current_version=version,
                        updated_at=now,
                        last_deployed_at=now,
                    )
                )
            await conn.execute(
                insert(agent_versions).values(
                    agent_seq=seq, version=version, definition=spec.to_document(), created_at=now
                )
            )
            return await self._load_agent(conn, org_id, spec.id, None)  # type: ignore[return-value]

    async def get_agent(
        self, org_id: str, agent_id: str, version: int | None = None
    ) -> Agent | None:
        async with self._read() as conn:
            return await self._load_agent(conn, org_id, agent_id, version)

    async def _load_agent(
        self, conn: AsyncConnection, org_id: str, agent_id: str, version: int | None
    ) -> Agent | None:
        stmt = (
            select(agents, agent_versions.c.definition, agent_versions.c.version.label("ver"))
            .join(agent_versions, agent_versions.c.agent_seq == agents.c.seq)
            .where(agents.c.org_id == org_id, agents.c.id == agent_id)
        )
        if version is None:
            stmt = stmt.where(agent_versions.c.version == agents.c.current_version)
        else:
            stmt = stmt.where(agent_versions.c.version == version)
        row = (await conn.execute(stmt)).first()
        return _agent(row) if row else None

    async def list_agents(self, org_id: str, query: CursorQuery) -> CursorPage[Agent]:
        async with self._read() as conn:
            return await self._list_agents(conn, org_id, query)

    async def _list_agents(
        self, conn: AsyncConnection, org_id: str, query: CursorQuery
    ) -> CursorPage[Agent]:
        window = await _cursor_window(conn, agents, org_id, query)
        if window is None:
            return CursorPage(items=[], has_more=False)
        conditions, order, backward = window
        conditions.append(agents.c.status == "deployed")
        stmt = (
            select(agents, agent_versions.c.definition, agent_versions.c.version.label("ver"))
            .join(
                agent_versions,
                (agent_versions.c.agent_seq == agents.c.seq)
                & (agent_versions.c.version == agents.c.current_version),
            )
            .where(*conditions)
            .order_by(order)
            .limit(query.limit + 1)
        )
        rows = (await conn.execute(stmt)).all()
        has_more = len(rows) > query.limit
        items = [_agent(r) for r in rows[: query.limit]]
        if backward:
            items.reverse()
        return CursorPage(items=items, has_more=has_more)

    async def set_agent_graphs(
        self, org_id: str, agent_id: str, graph_ids: list[str]
    ) -> list[str] | None:
        async with self._tx() as conn:
            result = await conn.execute(
                update(agents)
                .where(agents.c.org_id == org_id, agents.c.id == agent_id)
                .values(graph_ids=list(graph_ids), updated_at=utcnow())
            )
            if result.rowcount == 0:
                return None
        return list(graph_ids)

    # --- generations ---------------------------------------------------------------

    async def record_generation(self, record: GenerationRecord) -> None:
        async with self._tx() as conn:
            await conn.execute(
                insert(generations).values(
                    id=record.id,
                    org_id=record.org_id,
                    agent_id=record.agent_id,
                    agent_version=record.agent_version,
                    provider=record.provider,
                    model=record.model,
                    prompt_tokens=record.prompt_tokens,
                    completion_tokens=record.completion_tokens,
                    latency_ms=record.latency_ms,
                    streamed=record.streamed,
                    created_at=record.created_at,
                )
            )

    async def list_generations(self, org_id: str, agent_id: str) -> list[GenerationRecord]:
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(generations)
                    .where(generations.c.org_id == org_id, generations.c.agent_id == agent_id)
                    .order_by(generations.c.created_at)
                )
            ).all()
        return [
            GenerationRecord(
                id=r.id,
                org_id=r.org_id,
                agent_id=r.agent_id,
                agent_version=r.agent_version,
                provider=r.provider,
                model=r.model,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                latency_ms=r.latency_ms,
                streamed=r.streamed,
                created_at=r.created_at,
            )
            for r in rows
        ]


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        prefix=row.prefix,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _agent(row: Row[Any]) -> Agent:
    spec = AgentSpec.model_validate(row.definition)
    return Agent(
        id=row.id,
        org_id=row.org_id,
        name=spec.name,  # the name of this version (agents.name is the current one's)
        status=row.status,
        version=row.ver,
        spec=spec,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_deployed_at=row.last_deployed_at,
        graph_ids=list(row.graph_ids or []),
    )


async def _cursor_window(
    conn: AsyncConnection, table: Table, org_id: str, query: CursorQuery
) -> tuple[list[Any], Any, bool] | None:
    """Writer's cursor paging over a table with ``org_id``, ``id`` and a creation ``seq``:
    the conditions and order for one page, and whether it walks backward; None when a
    cursor is unknown (an empty page).

    Listing order is seq descending for "desc", ascending for "asc"; ``after`` moves
    forward in listing order, ``before`` backward. Walking backward (``before`` only)
    takes the rows nearest the cursor: the caller reverses them into listing order.
    """
    desc = query.order == "desc"
    conditions: list[Any] = [table.c.org_id == org_id]
    for cursor, forward in ((query.after, True), (query.before, False)):
        if cursor is None:
            continue
        seq = (
            await conn.execute(
                select(table.c.seq).where(table.c.org_id == org_id, table.c.id == cursor)
            )
        ).scalar_one_or_none()
        if seq is None:
            return None
        newer = desc != forward  # items later in the listing are older when desc
        conditions.append(table.c.seq > seq if newer else table.c.seq < seq)
    backward = query.before is not None and query.after is None
    ascending = (not desc) != backward
    return conditions, table.c.seq.asc() if ascending else table.c.seq.desc(), backward


class _SQLPart:
    """A store over the same engine (and transactions) as :class:`SQLStore`."""

    def __init__(self, store: SQLStore) -> None:
        self._store = store

    @property
    def dialect(self) -> str:
        return self._store.engine.dialect.name

    def _among(self, column: Any, name: str) -> Any:
        """``column`` is one of the values bound at execution as parameter ``name`` (a
        list). PostgreSQL: ``= ANY($1)`` with one array parameter, so the statement's text
        (and asyncpg's prepared statement) is the same whatever the number of values;
        SQLite: an expanding ``IN``."""
        if self.dialect == "postgresql":
            return column == any_(bindparam(name, type_=ARRAY(column.type)))
        return column.in_(bindparam(name, expanding=True))

    def _prebuilt(self, name: str, build: Callable[[], Any]) -> Any:
        """The statement ``build`` makes, built once per dialect and reused."""
        key = (self.dialect, name)
        stmt = _PREBUILT.get(key)
        if stmt is None:
            stmt = _PREBUILT[key] = build()
        return stmt

    def _tx(self) -> Any:
        return self._store._tx()

    def _read(self) -> Any:
        return self._store._read()


class SQLJobStore(_SQLPart):
    """``JobStore`` over the same engine as :class:`SQLStore`."""

    async def create_jobs(
        self, new_jobs: list[NewJob], enqueue: EnqueueHook | None = None
    ) -> list[Job]:
        if not new_jobs:
            return []
        now = utcnow()
        async with self._tx() as conn:
            base = {
                org_id: await self._rank_base(conn, org_id)
                for org_id in {j.org_id for j in new_jobs}
            }
            rows = []
            for j in new_jobs:
                base[j.org_id] += 1
                rows.append(queued_row(j, base[j.org_id], now))
            await insert_jobs(conn, rows)
            created = [_job_from_dict(r) for r in rows]
            if enqueue is not None:
                await enqueue(conn, created)
        return created

    async def _rank_base(self, conn: AsyncConnection, org_id: str) -> int:
        """Where an organisation's next jobs enter the fair order (virtual time).

        After its own newest active job (first in, first out within an organisation),
        and never before the lowest rank still queued (the queue's "now"): an
        organisation arriving with nothing queued interleaves with the others from
        the front instead of waiting behind their backlogs.
        """
        own = (
            await conn.execute(
                select(func.max(jobs.c.fair_rank)).where(jobs.c.org_id == org_id, text(ACTIVE_SQL))
            )
        ).scalar_one_or_none()
        front = (
            await conn.execute(select(func.min(jobs.c.fair_rank)).where(jobs.c.status == "queued"))
        ).scalar_one_or_none()
        return max(int(own or 0), int(front or 1) - 1)

    async def get_job(self, org_id: str | None, job_id: str) -> Job | None:
        stmt = select(jobs).where(jobs.c.id == job_id)
        if org_id is not None:
            stmt = stmt.where(jobs.c.org_id == org_id)
        async with self._read() as conn:
            row = (await conn.execute(stmt)).first()
        return _job(row) if row else None

    async def list_jobs(
        self,
        org_id: str,
        agent_id: str,
        statuses: tuple[str, ...] | None,
        offset: int,
        limit: int,
    ) -> JobPage:
        conditions = [jobs.c.org_id == org_id, jobs.c.agent_id == agent_id]
        if statuses:
            conditions.append(jobs.c.status.in_(statuses))
        async with self._read() as conn:
            rows, total = await count_and_page(conn, conditions, jobs.c.seq.desc(), offset, limit)
        return JobPage(items=_jobs(rows), total=total)

    async def get_job_detail(
        self, org_id: str | None, job_id: str
    ) -> tuple[Job, list[Attempt]] | None:
        """A job and its attempts in one transaction (J2's whole read)."""
        stmt = select(jobs).where(jobs.c.id == job_id)
        if org_id is not None:
            stmt = stmt.where(jobs.c.org_id == org_id)
        async with self._read() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return None
            attempts = (
                await conn.execute(
                    select(job_attempts)
                    .where(job_attempts.c.job_seq == row.seq)
                    .order_by(job_attempts.c.number)
                )
            ).all()
        return _job(row), _attempts(attempts)

    async def list_attempts(self, job_id: str) -> list[Attempt]:
        async with self._read() as conn:
            rows = (
                await conn.execute(
                    select(job_attempts)
                    .join(jobs, jobs.c.seq == job_attempts.c.job_seq)
                    .where(jobs.c.id == job_id)
                    .order_by(job_attempts.c.number)
                )
            ).all()
        return _attempts(rows)

    @staticmethod
    def _running_params(owner: str, lease_s: float, now: datetime) -> dict[str, Any]:
        """The parameters of :data:`_RUNNING` (prebuilt statements)."""
        return {"p_owner": owner, "p_expires": now + timedelta(seconds=lease_s), "p_now": now}

    def _picked(self, pick: Select[Any]) -> Any:
        """The rows ``pick`` chooses, for ``seq IN (...)`` in an UPDATE that takes them.

        PostgreSQL: locked with SKIP LOCKED in a CTE, which runs once. As a plain IN
        subquery the planner may rescan it, and a rescan skips the rows this statement has
        just locked and takes the next ones: more rows than ``limit``, out of order.
        """
        if self.dialect == "postgresql":
            picked = pick.with_for_update(skip_locked=True).cte("picked")
            return select(picked.c.seq)
        return pick.scalar_subquery()

    async def claim_jobs(self, provider: str, limit: int, owner: str, lease_s: float) -> list[Job]:
        if limit <= 0:
            return []
        now = utcnow()
        stmt = self._prebuilt("claim", self._build_claim)
        params = {
            "p_provider": provider,
            "p_limit": limit,
            **self._running_params(owner, lease_s, now),
        }
        async with self._tx() as conn:
            rows = (await conn.execute(stmt, params)).all()
        claimed = _jobs(rows)
        claimed.sort(key=lambda j: (-j.priority, j.created_at))
        return claimed

    def _build_claim(self) -> Any:
        pick = (
            select(jobs.c.seq)
            .where(
                jobs.c.provider == bindparam("p_provider"),
                jobs.c.status == "queued",
                jobs.c.available_at <= bindparam("p_now"),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.fair_rank, jobs.c.seq)
            .limit(bindparam("p_limit", type_=Integer))
        )
        return (
            update(jobs)
            .where(jobs.c.seq.in_(self._picked(pick)), jobs.c.status == "queued")
            .values(**_RUNNING)
            .returning(*jobs.c)
        )

    async def start_job(self, job_id: str, owner: str, lease_s: float) -> Job | None:
        started = await self.start_jobs([job_id], owner, lease_s)
        return started[0] if started else None

    async def start_jobs(self, job_ids: list[str], owner: str, lease_s: float) -> list[Job]:
        """Mark jobs running under ``owner``: those queued, or running under an expired
        lease (taking one over ends the dead worker's attempt, recorded as the reaper
        records it). Finished jobs, live leases and rows another transaction holds are
        skipped. One transaction for the whole batch."""
        if not job_ids:
            return []
        now = utcnow()
        pick, take = self._prebuilt("start", self._build_start)
        async with self._tx() as conn:
            before = (await conn.execute(pick, {"p_ids": job_ids, "p_now": now})).all()
            if not before:
                return []
            params = {
                "p_seqs": [b.seq for b in before],
                **self._running_params(owner, lease_s, now),
            }
            rows = (await conn.execute(take, params)).all()
            lost = [
                {
                    "job_seq": b.seq,
                    "number": b.attempts,
                    "worker": b.lease_owner or "unknown",
                    "started_at": b.started_at or now,
                    "ended_at": now,
                    "outcome": "lease_expired",
                    "error_class": "lease_expired",
                    "error": "the worker stopped renewing its lease (killed or stuck)",
                    "provider_latency_ms": None,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                }
                for b in before
                if b.status == "running"
            ]
            if lost:
                dialect_insert: Any = pg_insert if self.dialect == "postgresql" else sqlite_insert
                await conn.execute(
                    dialect_insert(job_attempts).on_conflict_do_nothing(
                        index_elements=[job_attempts.c.job_seq, job_attempts.c.number]
                    ),
                    lost,
                )
        order = {job_id: index for index, job_id in enumerate(job_ids)}
        return sorted(_jobs(rows), key=lambda job: order[job.id])

    def _build_start(self) -> tuple[Any, Any]:
        # The status as ``status || ''``: the same test, but one no partial index's
        # predicate matches, so the rows are found by their ids whatever the statistics
        # say. With statistics from when few jobs were queued (a fresh table, or an
        # ANALYZE between bursts), PostgreSQL read every queued and running row through
        # ix_jobs_claim and ix_jobs_lease for each batch instead: 2.4 ms per 100 jobs
        # with 20,000 queued, where 100 lookups by id take ~0.3 ms.
        status = jobs.c.status.concat(literal_column("''"))
        pick = (
            select(
                jobs.c.seq, jobs.c.status, jobs.c.lease_owner, jobs.c.attempts, jobs.c.started_at
            )
            .where(
                self._among(jobs.c.id, "p_ids"),
                (status == "queued")
                | ((status == "running") & (jobs.c.lease_expires_at < bindparam("p_now"))),
            )
            .order_by(jobs.c.seq)
        )
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        take = (
            update(jobs)
            .where(self._among(jobs.c.seq, "p_seqs"))
            .values(**_RUNNING)
            .returning(*jobs.c)
        )
        return pick, take

    async def renew_leases(self, owner: str, job_ids: list[str], lease_s: float) -> int:
        if not job_ids:
            return 0
        expires = utcnow() + timedelta(seconds=lease_s)
        stmt = self._prebuilt("renew", self._build_renew)
        async with self._tx() as conn:
            result = await conn.execute(
                stmt, {"p_ids": job_ids, "p_owner": owner, "p_expires": expires}
            )
        return int(result.rowcount)

    def _build_renew(self) -> Any:
        mine = select(jobs.c.seq).where(
            self._among(jobs.c.id, "p_ids"),
            jobs.c.lease_owner == bindparam("p_owner"),
            jobs.c.status == "running",
        )
        return (
            update(jobs)
            .where(
                # SKIP LOCKED (PostgreSQL): never wait for a row another transaction
                # holds. A multi-row UPDATE that waits deadlocks with the outcome
                # writer's batch, which locks the same rows in another order; a
                # skipped row is being finished, or is renewed on the next round.
                jobs.c.seq.in_(self._picked(mine)),
                jobs.c.lease_owner == bindparam("p_owner"),
                jobs.c.status == "running",
            )
            .values(lease_expires_at=bindparam("p_expires"))
        )

    async def unstart_jobs(
        self, owner: str, job_ids: list[str], enqueue: EnqueueHook | None = None
    ) -> int:
        """Queue again jobs this worker started but never sent to the provider (picked
        ahead, then the worker stopped): as they were before the start, no attempt used."""
        if not job_ids:
            return 0
        async with self._tx() as conn:
            rows = await self._requeue_held(
                conn, owner, job_ids, utcnow(), enqueue, attempts=jobs.c.attempts - 1
            )
        return len(rows)

    async def _requeue_held(
        self,
        conn: AsyncConnection,
        owner: str,
        job_ids: list[str],
        now: datetime,
        enqueue: EnqueueHook | None,
        **values: Any,
    ) -> Sequence[Row[Any]]:
        """Put the jobs ``owner`` still runs back in the queue at ``now``, with ``values``
        on top, and queue them on the engine; the rows as they are afterwards."""
        rows = (
            await conn.execute(
                update(jobs)
                .where(
                    jobs.c.id.in_(job_ids),
                    jobs.c.lease_owner == owner,
                    jobs.c.status == "running",
                )
                .values(
                    status="queued",
                    lease_owner=None,
                    lease_expires_at=None,
                    available_at=now,
                    updated_at=now,
                    **values,
                )
                .returning(*jobs.c)
            )
        ).all()
        if rows and enqueue is not None:
            await enqueue(conn, [_job(r) for r in rows])
        return rows

    async def release_jobs(
        self, owner: str, job_ids: list[str], enqueue: EnqueueHook | None = None
    ) -> int:
        if not job_ids:
            return 0
        now = utcnow()
        async with self._tx() as conn:
            # A shutdown is not the job's fault: its allowance grows by the attempt it
            # used (the attempt stays in the history).
            rows = await self._requeue_held(
                conn, owner, job_ids, now, enqueue, max_attempts=jobs.c.max_attempts + 1
            )
            for r in rows:
                await self._upsert_attempt(
                    conn,
                    {
                        "job_seq": r.seq,
                        "number": r.attempts,
                        "worker": owner,
                        "started_at": r.started_at or now,
                        "ended_at": now,
                        "outcome": "released",
                        "error_class": None,
                        "error": "worker shut down before the attempt finished",
                        "provider_latency_ms": None,
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                    },
                )
        return len(rows)

    async def reap_expired(
        self, enqueue: EnqueueHook | None = None, limit: int = 1000, grace_s: float = 0.0
    ) -> list[Job]:
        """Put running jobs whose lease expired (more than ``grace_s`` ago) back in the
        queue: their worker died."""
        now = utcnow()
        expired_before = now - timedelta(seconds=grace_s)
        pick = (
            select(jobs.c.seq)
            .where(jobs.c.status == "running", jobs.c.lease_expires_at < expired_before)
            .limit(limit)
        )
        out_of_attempts = jobs.c.attempts >= jobs.c.max_attempts
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.seq.in_(self._picked(pick)), jobs.c.status == "running")
                    .values(
                        # A job whose every attempt ended with its worker gone (it may be
                        # what kills them) fails instead of looping forever.
                        status=case((out_of_attempts, "failed"), else_="queued"),
                        error=case((out_of_attempts, _WORKER_LOST), else_=jobs.c.error),
                        error_class=case(
                            (out_of_attempts, "lease_expired"), else_=jobs.c.error_class
                        ),
                        completed_at=case((out_of_attempts, now), else_=None),
                        lease_owner=None,
                        lease_expires_at=None,
                        available_at=now,
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                )
            ).all()
            if not rows:
                return []
            # RETURNING gives the new values: the dead worker's name is gone, its attempt
            # number (attempts) is kept.
            for r in rows:
                await self._upsert_attempt(
                    conn,
                    {
                        "job_seq": r.seq,
                        "number": r.attempts,
                        "worker": "unknown",
                        "started_at": r.started_at or now,
                        "ended_at": now,
                        "outcome": "lease_expired",
                        "error_class": "lease_expired",
                        "error": "the worker stopped renewing its lease (killed or stuck)",
                        "provider_latency_ms": None,
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                    },
                    replace=False,
                )
            reaped = [_job(r) for r in rows]
            await outbox.write_events(
                conn,
                [
                    outbox.Event(
                        r.org_id,
                        "job.failed",
                        webhooks.job_event(
                            "job.failed",
                            job_id=r.id,
                            application_id=r.agent_id,
                            created_at=r.created_at,
                            completed_at=now,
                            error=r.error,
                            batch_id=r.batch_id,
                        ),
                        now,
                    )
                    for r in rows
                    if r.status == "failed"
                ],
            )
            requeued = [job for job in reaped if job.status == "queued"]
            if requeued and enqueue is not None:
                await enqueue(conn, requeued)
            # A batch whose last job just failed for good is completed now.
            await complete_batches(
                conn, {r.batch_id for r in rows if r.status == "failed" and r.batch_id}, at=now
            )
        return reaped

    async def _upsert_attempt(
        self,
        conn: AsyncConnection,
        values: dict[str, Any],
        *,
        replace: bool = True,
        keep_applied: bool = False,
    ) -> None:
        dialect_insert: Any = pg_insert if self.dialect == "postgresql" else sqlite_insert
        stmt = dialect_insert(job_attempts).values(**values)
        keys = [job_attempts.c.job_seq, job_attempts.c.number]
        if replace:
            update_cols = {k: stmt.excluded[k] for k in values if k not in ("job_seq", "number")}
            # ``keep_applied``: a dropped duplicate never overwrites the record of the
            # outcome that took effect for the same attempt.
            where = job_attempts.c.outcome.not_in(_APPLIED) if keep_applied else None
            final = stmt.on_conflict_do_update(index_elements=keys, set_=update_cols, where=where)
        else:
            final = stmt.on_conflict_do_nothing(index_elements=keys)
        await conn.execute(final)

    async def finish_attempts(
        self, outcomes: list[Outcome], enqueue: EnqueueHook | None = None
    ) -> list[bool]:
        """Apply a batch of outcomes in one transaction, with a handful of statements.

        The jobs' rows are read (and locked, on PostgreSQL) once; each outcome is decided
        against that state in order (so two outcomes for one job in one batch behave as if
        written one after the other); then one executemany per kind of change and one for
        the attempt records.
        """
        if not outcomes:
            return []
        pick = self._prebuilt("finish-pick", self._build_finish_pick)
        async with self._tx() as conn:
            ids = list({o.job_id: None for o in outcomes})
            picked = (await conn.execute(pick, {"p_ids": ids})).all()
            state = {r.id: [r.seq, r.status, r.lease_owner, r.attempts] for r in picked}
            hooked = {r.seq for r in picked if r.hooked}
            # Batch jobs among them: the batches whose last job this may end.
            in_batch = {r.id: r.batch_id for r in picked if r.batch_id is not None}
            ended_batches: set[str] = set()
            applied: list[bool] = []
            changes: dict[str, list[dict[str, Any]]] = {"completed": [], "retry": [], "failed": []}
            records: list[dict[str, Any]] = []
            dropped: list[dict[str, Any]] = []
            for o in outcomes:
                if o.kind not in changes and o.kind != "cancelled":
                    raise ValueError(f"unknown outcome kind {o.kind!r}")
                current = state.get(o.job_id)
                if current is None:
                    applied.append(False)
                    continue
                seq, status, owner, attempts = current
                if o.kind == "cancelled":
                    # The job's row already says cancelled: only the attempt is recorded.
                    ok = status == "cancelled"
                    applied.append(ok)
                    (records if ok else dropped).append(_attempt_params(seq, o, ok))
                    continue
                if o.kind == "completed":
                    # The first result wins: any unfinished job takes it, a finished one never.
                    ok = status in ACTIVE
                else:  # retry and failed apply only under the same lease
                    ok = status == "running" and owner == o.owner and attempts == o.attempt
                applied.append(ok)
                if ok:
                    current[1] = {"completed": "completed", "retry": "queued"}.get(o.kind, "failed")
                    current[2] = None
                    changes[o.kind].append(_change_params(seq, o))
                    if o.kind != "retry" and o.job_id in in_batch:
                        ended_batches.add(in_batch[o.job_id])
                (records if ok else dropped).append(_attempt_params(seq, o, ok))
            for kind, params in changes.items():
                if not params:
                    continue
                if kind == "completed" and self.dialect == "postgresql":
                    # One statement for the batch (an executemany runs one UPDATE per job
                    # in the server: ~25 % more of its CPU for the same rows).
                    await conn.execute(_COMPLETE_ALL_PG, _completed_arrays(params))
                else:
                    await _executemany(conn, _CHANGE_STATEMENTS[kind], params)
            if hooked:
                await _announce(conn, changes, hooked)
            if records:
                await self._upsert_attempts(conn, records, keep_applied=False)
            if dropped:
                await self._upsert_attempts(conn, dropped, keep_applied=True)
            if changes["retry"] and enqueue is not None:
                requeued = [p["b_seq"] for p in changes["retry"]]
                rows = (await conn.execute(select(jobs).where(jobs.c.seq.in_(requeued)))).all()
                await enqueue(conn, _jobs(rows))
            if ended_batches:  # last: the batch rows stay locked only until the commit
                await complete_batches(conn, ended_batches)
        return applied

    def _build_finish_pick(self) -> Any:
        pick = (
            select(
                jobs.c.seq,
                jobs.c.id,
                jobs.c.status,
                jobs.c.lease_owner,
                jobs.c.attempts,
                jobs.c.batch_id,
                # Webhooks: whether the job's organisation has any endpoint (indexed).
                has_endpoints(jobs.c.org_id).label("hooked"),
            )
            .where(self._among(jobs.c.id, "p_ids"))
            .order_by(jobs.c.seq)
        )
        if self.dialect == "postgresql":
            pick = pick.with_for_update(of=jobs)
        return pick

    async def _upsert_attempts(
        self, conn: AsyncConnection, rows: list[dict[str, Any]], *, keep_applied: bool
    ) -> None:
        """Write attempt records, each replacing an earlier record of the same attempt (a
        dropped duplicate never replaces one that took effect: ``keep_applied``), as if
        written one after the other. PostgreSQL: one statement over arrays (as an
        executemany it ran one INSERT per job: 20,000 of them for 20,000 jobs)."""
        if self.dialect != "postgresql" or len(rows) < 2:
            await _executemany(conn, self._attempts_upsert(keep_applied=keep_applied), rows)
            return
        # One statement may not change a row twice: the last record of an attempt wins,
        # as it would have written one after the other.
        last = {(row["job_seq"], row["number"]): row for row in rows}
        tail = _ATTEMPT_CONFLICT + (_KEEP_APPLIED if keep_applied else "")
        await conn.execute(*_unnest_insert(job_attempts, list(last.values()), conn.dialect, tail))

    def _attempts_upsert(self, *, keep_applied: bool) -> Any:
        """INSERT of attempt records that replaces an earlier record of the same attempt,
        except that a dropped duplicate never overwrites an outcome that took effect.
        Built once per dialect (every outcome batch uses it)."""
        return self._prebuilt(
            f"attempts-upsert-{keep_applied}",
            lambda: self._build_attempts_upsert(keep_applied=keep_applied),
        )

    def _build_attempts_upsert(self, *, keep_applied: bool) -> Any:
        dialect_insert: Any = pg_insert if self.dialect == "postgresql" else sqlite_insert
        stmt = dialect_insert(job_attempts)
        columns = [c.name for c in job_attempts.c if c.name not in ("job_seq", "number")]
        return stmt.on_conflict_do_update(
            index_elements=[job_attempts.c.job_seq, job_attempts.c.number],
            set_={name: stmt.excluded[name] for name in columns},
            where=(
                and_(*(job_attempts.c.outcome != outcome for outcome in _APPLIED))
                if keep_applied
                else None
            ),
        )

    async def retry_job(
        self, org_id: str, job_id: str, extra_attempts: int, enqueue: EnqueueHook | None = None
    ) -> Job:
        now = utcnow()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.status, jobs.c.attempts, jobs.c.max_attempts, jobs.c.seq)
                    .where(jobs.c.org_id == org_id, jobs.c.id == job_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            # A cancelled job shows as failed on Writer's endpoints, so J4 may retry it.
            if row.status not in ("failed", "cancelled"):
                raise JobNotRetryable(job_id, wire_status(row.status))
            updated = (
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.seq == row.seq, jobs.c.status.in_(("failed", "cancelled")))
                    .values(**requeued(now, row.attempts + extra_attempts))
                    .returning(*jobs.c)
                )
            ).first()
            assert updated is not None
            job = _job(updated)
            if enqueue is not None:
                await enqueue(conn, [job])
        return job

    async def next_due(self, provider: str) -> datetime | None:
        async with self._read() as conn:
            value = (
                await conn.execute(
                    select(func.min(jobs.c.available_at)).where(
                        jobs.c.provider == provider, jobs.c.status == "queued"
                    )
                )
            ).scalar_one_or_none()
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    async def active_providers(self) -> list[str]:
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.provider).where(jobs.c.status.in_(ACTIVE)).distinct()
                )
            ).all()
        return [r.provider for r in rows]

    async def cancel_jobs(self, org_id: str | None, job_ids: list[str]) -> list[Job]:
        """One UPDATE: queued or running jobs become cancelled (their lease dropped, so no
        renewal, release, reaper or outcome touches them again); finished ones stay."""
        if not job_ids:
            return []
        now = utcnow()
        conditions: list[Any] = [jobs.c.id.in_(job_ids), jobs.c.status.in_(ACTIVE)]
        if org_id is not None:
            conditions.append(jobs.c.org_id == org_id)
        stmt = (
            update(jobs)
            .where(*conditions)
            .values(
                status="cancelled",
                completed_at=now,
                updated_at=now,
                error=CANCELLED_ERROR,
                error_class="cancelled",
                **_RELEASE_LEASE,
            )
            .returning(*jobs.c)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(stmt)).all()
            # A batch whose last job was just cancelled (one by one) is completed now.
            await complete_batches(conn, {r.batch_id for r in rows if r.batch_id}, at=now)
        return [_job(r) for r in rows]

    async def cancelled_among(self, job_ids: list[str]) -> list[str]:
        if not job_ids:
            return []
        stmt = self._prebuilt(
            "cancelled-among",
            lambda: select(jobs.c.id).where(
                self._among(jobs.c.id, "p_ids"), jobs.c.status == "cancelled"
            ),
        )
        async with self._read() as conn:
            rows = (await conn.execute(stmt, {"p_ids": list(job_ids)})).all()
        return [r.id for r in rows]


class SQLFileStore(_SQLPart):
    """``FileStore`` over the same engine as :class:`SQLStore`."""

    async def create_file(self, new: NewFile, dispatch: FileHook | None = None) -> StoredFile:
        now = utcnow()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    insert(files)
                    .values(
                        id=new.id,
                        org_id=new.org_id,
                        name=new.name,
                        mime_type=new.mime_type,
                        extension=new.extension,
                        size_bytes=new.size_bytes,
                        sha256=new.sha256,
                        storage_key=new.storage_key,
                        status=new.status,
                        graph_ids=list(new.graph_ids),
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(*files.c)
                )
            ).one()
            if dispatch is not None and new.status == "in_progress":
                await dispatch(conn, [new.id])
        return _file(row)

    async def get_file(self, org_id: str, file_id: str) -> StoredFile | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(files).where(files.c.org_id == org_id, files.c.id == file_id)
                )
            ).first()
        return _file(row) if row else None

    async def list_files(self, org_id: str, query: FileQuery) -> CursorPage[StoredFile]:
        cq = query.cursor
        async with self._read() as conn:
            window = await _cursor_window(conn, files, org_id, cq)
            if window is None:
                return CursorPage(items=[], has_more=False)
            conditions, order, backward = window
            if query.status is not None:
                conditions.append(files.c.status == query.status)
            if query.file_types:
                conditions.append(files.c.extension.in_(query.file_types))
            stmt = select(files).where(*conditions).order_by(order)
            if query.graph_id is None:
                stmt = stmt.limit(cq.limit + 1)
            rows = (await conn.execute(stmt)).all()
        if query.graph_id is not None:
            # graph_ids is a JSON list: filtered here, the same on every dialect.
            rows = [r for r in rows if query.graph_id in (r.graph_ids or [])][: cq.limit + 1]
        has_more = len(rows) > cq.limit
        items = [_file(r) for r in rows[: cq.limit]]
        if backward:
            items.reverse()
        return CursorPage(items=items, has_more=has_more)

    async def delete_file(self, org_id: str, file_id: str) -> StoredFile | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    delete(files)
                    .where(files.c.org_id == org_id, files.c.id == file_id)
                    .returning(*files.c)
                )
            ).first()
        return _file(row) if row else None

    async def claim_files(
        self, limit: int, lease_s: float, idle_s: float = 0.0
    ) -> list[StoredFile]:
        now = utcnow()
        waiting = [
            files.c.status == "in_progress",
            or_(files.c.lease_expires_at.is_(None), files.c.lease_expires_at < now),
        ]
        if idle_s > 0:
            waiting.append(files.c.updated_at <= now - timedelta(seconds=idle_s))
        pick = select(files.c.seq).where(*waiting).order_by(files.c.seq).limit(limit)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        async with self._tx() as conn:
            # Idle workers poll: a plain read first, so an empty backlog takes no write lock.
            if (await conn.execute(select(files.c.seq).where(*waiting).limit(1))).first() is None:
                return []
            rows = (
                await conn.execute(
                    update(files)
                    .where(files.c.seq.in_(pick.scalar_subquery()))
                    .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
                    .returning(*files.c)
                )
            ).all()
        return sorted((_file(r) for r in rows), key=lambda f: f.created_at)

    async def claim_file(self, file_id: str, lease_s: float) -> StoredFile | None:
        now = utcnow()
        async with self._tx() as conn:
            # One conditional UPDATE: of two workers handed the same file, one gets it.
            row = (
                await conn.execute(
                    update(files)
                    .where(
                        files.c.id == file_id,
                        files.c.status == "in_progress",
                        or_(files.c.lease_expires_at.is_(None), files.c.lease_expires_at < now),
                    )
                    .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=now)
                    .returning(*files.c)
                )
            ).first()
        return _file(row) if row else None

    async def set_processed(
        self,
        file_id: str,
        status: FileStatus,
        text: str | None = None,
        word_count: int | None = None,
        error: str | None = None,
    ) -> StoredFile | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    update(files)
                    .where(files.c.id == file_id)
                    .values(
                        status=status,
                        text=text,
                        word_count=word_count,
                        error=error,
                        lease_expires_at=None,
                        updated_at=utcnow(),
                    )
                    .returning(*files.c)
                )
            ).first()
        return _file(row) if row else None

    async def retry_files(
        self, org_id: str, file_ids: list[str], dispatch: FileHook | None = None
    ) -> list[StoredFile]:
        wanted = list(dict.fromkeys(file_ids))
        if not wanted:
            return []
        async with self._tx() as conn:
            pick = select(files.c.id, files.c.status).where(
                files.c.org_id == org_id, files.c.id.in_(wanted)
            )
            if self.dialect == "postgresql":
                pick = pick.with_for_update()
            found = {r.id: r.status for r in await conn.execute(pick)}
            for file_id in wanted:
                if file_id not in found:
                    raise FileNotFound(file_id)
            for file_id in wanted:
                if found[file_id] != "failed":
                    raise FileNotRetryable(file_id, found[file_id])
            rows = (
                await conn.execute(
                    update(files)
                    .where(files.c.org_id == org_id, files.c.id.in_(wanted))
                    .values(
                        status="in_progress",
                        error=None,
                        text=None,
                        word_count=None,
                        lease_expires_at=None,
                        updated_at=utcnow(),
                    )
                    .returning(*files.c)
                )
            ).all()
            if dispatch is not None and rows:
                await dispatch(conn, [r.id for r in rows])
        return [_file(r) for r in rows]


def _file(row: Row[Any]) -> StoredFile:
    m = row._mapping
    return StoredFile(
        id=m["id"],
        org_id=m["org_id"],
        name=m["name"],
        mime_type=m["mime_type"],
        extension=m["extension"],
        size_bytes=m["size_bytes"],
        sha256=m["sha256"],
        storage_key=m["storage_key"],
        status=m["status"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        graph_ids=list(m["graph_ids"] or []),
        error=m["error"],
        text=m["text"],
        word_count=m["word_count"],
    )


_WORKER_LOST = (
    "the worker running this job stopped (killed or stuck) on every attempt; "
    "it was not retried again"
)
_RELEASE_LEASE = {"lease_owner": None, "lease_expires_at": None}
#: A job taken to run (prebuilt statements; parameters from ``_running_params``).
_RUNNING: dict[str, Any] = {
    "status": "running",
    "lease_owner": bindparam("p_owner"),
    "lease_expires_at": bindparam("p_expires"),
    "attempts": jobs.c.attempts + 1,
    "started_at": bindparam("p_now"),
    "updated_at": bindparam("p_now"),
}
#: What a ``completed`` outcome carries (``_change_params``' ``b_`` keys) and its types.
_COMPLETED_FIELDS: tuple[tuple[str, Any], ...] = (
    ("seq", BigInteger()),
    ("title", String()),
    ("suggestion", Text()),
    ("ended_at", UTCDateTime()),
    ("prompt_tokens", Integer()),
    ("completion_tokens", Integer()),
)


def _completed(source: Any) -> Any:
    """The UPDATE of a ``completed`` outcome, its values read from ``source`` (by field
    name): the one definition of what it writes, for one job's bind parameters or for a
    batch's arrays."""
    return (
        update(jobs)
        .where(jobs.c.seq == source["seq"])
        .values(
            status="completed",
            result_title=source["title"],
            result_suggestion=source["suggestion"],
            error=None,
            error_class=None,
            completed_at=source["ended_at"],
            updated_at=source["ended_at"],
            prompt_tokens=jobs.c.prompt_tokens + source["prompt_tokens"],
            completion_tokens=jobs.c.completion_tokens + source["completion_tokens"],
            **_RELEASE_LEASE,
        )
    )


_CHANGE_STATEMENTS: dict[str, Any] = {
    "completed": _completed({name: bindparam(f"b_{name}") for name, _ in _COMPLETED_FIELDS}),
    "retry": update(jobs)
    .where(jobs.c.seq == bindparam("b_seq"))
    .values(
        status="queued",
        available_at=bindparam("b_available_at"),
        error=bindparam("b_error"),
        error_class=bindparam("b_error_class"),
        updated_at=bindparam("b_ended_at"),
        **_RELEASE_LEASE,
    ),
    "failed": update(jobs)
    .where(jobs.c.seq == bindparam("b_seq"))
    .values(
        status="failed",
        error=bindparam("b_error"),
        error_class=bindparam("b_error_class"),
        completed_at=bindparam("b_ended_at"),
        updated_at=bindparam("b_ended_at"),
        **_RELEASE_LEASE,
    ),
}

#: The attempt upsert's conflict clause over ``unnest`` (PostgreSQL; as in
#: ``_build_attempts_upsert``).
_ATTEMPT_CONFLICT = "ON CONFLICT (job_seq, number) DO UPDATE SET " + ", ".join(
    f"{c.name} = excluded.{c.name}" for c in job_attempts.c if c.name not in ("job_seq", "number")
)
_KEEP_APPLIED = " WHERE job_attempts.outcome NOT IN ({})".format(
    ", ".join(f"'{outcome}'" for outcome in _APPLIED)
)

#: The "completed" changes of a whole batch in one UPDATE on PostgreSQL: the values as one
#: array per field (``a_<field>``), joined to the jobs through ``unnest``.
_COMPLETE_ALL_PG = _completed(
    func.unnest(*(bindparam(f"a_{name}", type_=ARRAY(type_)) for name, type_ in _COMPLETED_FIELDS))
    .table_valued(*(column(name, type_) for name, type_ in _COMPLETED_FIELDS))
    .render_derived(name="v")
    .c
)


def _completed_arrays(changes: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A batch's ``completed`` changes as the arrays of :data:`_COMPLETE_ALL_PG`."""
    return {
        f"a_{name}": [change[f"b_{name}"] for change in changes] for name, _ in _COMPLETED_FIELDS
    }


async def _announce(
    conn: AsyncConnection, changes: dict[str, list[dict[str, Any]]], hooked: set[int]
) -> None:
    """Outbox rows for the jobs that just completed or failed in an organisation with
    webhook endpoints (``hooked``: their seqs), in the outcome's transaction."""
    ended = {p["b_seq"]: (kind, p) for kind in ("completed", "failed") for p in changes[kind]}
    seqs = [seq for seq in ended if seq in hooked]
    if not seqs:
        return
    rows = await conn.execute(
        select(
            jobs.c.seq,
            jobs.c.id,
            jobs.c.org_id,
            jobs.c.agent_id,
            jobs.c.created_at,
            jobs.c.batch_id,
        ).where(jobs.c.seq.in_(seqs))
    )
    events = []
    for r in rows:
        kind, p = ended[r.seq]
        event_type: webhooks.EventType = "job.completed" if kind == "completed" else "job.failed"
        payload = webhooks.job_event(
            event_type,
            job_id=r.id,
            application_id=r.agent_id,
            created_at=r.created_at,
            completed_at=p["b_ended_at"],
            title=p["b_title"],
            suggestion=p["b_suggestion"],
            error=p["b_error"],
            batch_id=r.batch_id,
        )
        events.append(outbox.Event(r.org_id, event_type, payload, p["b_ended_at"]))
    await outbox.write_events(conn, events)


def _change_params(seq: int, o: Outcome) -> dict[str, Any]:
    return {
        "b_seq": seq,
        "b_title": o.title,
        "b_suggestion": o.suggestion,
        "b_ended_at": o.ended_at,
        "b_available_at": o.available_at or o.ended_at,
        "b_error": o.error,
        "b_error_class": o.error_class,
        "b_prompt_tokens": o.prompt_tokens,
        "b_completion_tokens": o.completion_tokens,
    }


def _attempt_params(seq: int, o: Outcome, applied: bool) -> dict[str, Any]:
    return {
        "job_seq": seq,
        "number": o.attempt,
        "worker": o.owner,
        "started_at": o.started_at,
        "ended_at": o.ended_at,
        "outcome": o.kind if applied else f"{o.kind}_dropped",
        "error_class": o.error_class,
        "error": o.error,
        "provider_latency_ms": o.provider_latency_ms,
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
    }


def _job_from_dict(values: dict[str, Any]) -> Job:
    return Job(
        id=values["id"],
        org_id=values["org_id"],
        agent_id=values["agent_id"],
        agent_version=values["agent_version"],
        provider=values["provider"],
        inputs=values["inputs"],
        status=values["status"],
        priority=values["priority"],
        attempts=values["attempts"],
        max_attempts=values["max_attempts"],
        created_at=values["created_at"],
        updated_at=values["updated_at"],
        available_at=values["available_at"],
        fair_rank=values["fair_rank"],
    )


#: A Job's fields, in its constructor's order.
_JOB_FIELDS = tuple(f.name for f in dataclass_fields(Job))
#: Per shape of row (its column names): the positions of a Job's fields in it.
_JOB_PICKS: dict[tuple[str, ...], Callable[[Any], tuple[Any, ...]]] = {}


def _jobs(rows: Sequence[Row[Any]]) -> list[Job]:
    """Jobs from rows holding every column of ``jobs`` (in any order, others beside them).
    Each row's values are taken by position in one C call (``itemgetter``), not looked up
    by name per field: a claim turns up to 256 rows into jobs at a time."""
    if not rows:
        return []
    names = tuple(rows[0]._fields)
    pick = _JOB_PICKS.get(names)
    if pick is None:
        pick = _JOB_PICKS[names] = itemgetter(*(names.index(f) for f in _JOB_FIELDS))
    return [Job(*pick(row)) for row in rows]


def _job(row: Row[Any]) -> Job:
    return _jobs([row])[0]


def _attempts(rows: Sequence[Any]) -> list[Attempt]:
    return [
        Attempt(
            number=r.number,
            worker=r.worker,
            started_at=r.started_at,
            ended_at=r.ended_at,
            outcome=r.outcome,
            error_class=r.error_class,
            error=r.error,
            provider_latency_ms=r.provider_latency_ms,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
        )
        for r in rows
    ]
