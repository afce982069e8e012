"""The SQLAlchemy store: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) when configured.

All SQL of Copydesk lives here. The services are the only callers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from copydesk.agents import AgentSpec
from copydesk.store import (
    Agent,
    ApiKey,
    CursorPage,
    CursorQuery,
    GenerationRecord,
    Organization,
)
from copydesk.stores.tables import agent_versions, agents, api_keys, generations, organizations


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


class SQLStore:
    """``Store`` over SQLAlchemy Core. Give it a URL (it owns the engine) or an engine."""

    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        self.url = url
        self._engine = engine
        self._owns_engine = engine is None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open: use `async with app` or await store.open()")
        return self._engine

    async def open(self) -> None:
        if self._engine is None:
            self._engine = create_engine(self.url)

    async def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    # --- organisations and keys -----------------------------------------------------

    async def create_organization(self, name: str) -> Organization:
        org = Organization(id=new_id(), name=name, created_at=utcnow())
        async with self._tx() as conn:
            await conn.execute(
                insert(organizations).values(id=org.id, name=org.name, created_at=org.created_at)
            )
        return org

    async def get_organization_by_name(self, name: str) -> Organization | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(select(organizations).where(organizations.c.name == name))
            ).first()
        return Organization(row.id, row.name, row.created_at) if row else None

    async def get_organization(self, org_id: str) -> Organization | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(select(organizations).where(organizations.c.id == org_id))
            ).first()
        return Organization(row.id, row.name, row.created_at) if row else None

    async def list_organizations(self) -> list[Organization]:
        async with self._tx() as conn:
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
        async with self._tx() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))).first()
        return _api_key(row) if row else None

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        stmt = select(api_keys).order_by(api_keys.c.created_at)
        if org_id is not None:
            stmt = stmt.where(api_keys.c.org_id == org_id)
        async with self._tx() as conn:
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
        async with self._tx() as conn:
            return int((await conn.execute(select(func.count()).select_from(api_keys))).scalar_one())

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
        async with self._tx() as conn:
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
        async with self._tx() as conn:
            return await self._list_agents(conn, org_id, query)

    async def _cursor_seq(self, conn: AsyncConnection, org_id: str, agent_id: str) -> int | None:
        return (
            await conn.execute(
                select(agents.c.seq).where(agents.c.org_id == org_id, agents.c.id == agent_id)
            )
        ).scalar_one_or_none()

    async def _list_agents(
        self, conn: AsyncConnection, org_id: str, query: CursorQuery
    ) -> CursorPage[Agent]:
        # Listing order: seq descending for "desc", ascending for "asc" (seq follows
        # creation). ``after`` moves forward in listing order, ``before`` backward.
        desc = query.order == "desc"
        conditions: list[Any] = [
            agents.c.org_id == org_id,
            agents.c.status == "deployed",
        ]
        for cursor, forward in ((query.after, True), (query.before, False)):
            if cursor is None:
                continue
            seq = await self._cursor_seq(conn, org_id, cursor)
            if seq is None:
                return CursorPage(items=[], has_more=False)
            newer = desc != forward  # items later in the listing are older when desc
            conditions.append(agents.c.seq > seq if newer else agents.c.seq < seq)
        # Walking backward (before only) takes the items nearest the cursor, then
        # restores listing order.
        backward = query.before is not None and query.after is None
        ascending = (not desc) != backward
        order = agents.c.seq.asc() if ascending else agents.c.seq.desc()
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
    return Agent(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        status=row.status,
        version=row.ver,
        spec=AgentSpec.model_validate(row.definition),
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_deployed_at=row.last_deployed_at,
        graph_ids=list(row.graph_ids or []),
    )

