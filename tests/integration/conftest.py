"""Databases for integration tests: a fresh SQLite file or a fresh PostgreSQL schema per test.

``make_database(kind, tmp_path)`` is the building block (reuse it for anything that needs a
real database: the store, the jobs engine, a worker); the ``store`` fixture runs a test
against every ``SQLStore`` dialect. Everything is function-scoped and disposed on exit.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from copydesk.migrations import upgrade_to_head
from copydesk.stores.sql import SQLStore, create_engine
from tests.conftest import PG_ADMIN_URL, PG_HOST, PG_PORT, require_service

DatabaseKind = Literal["sqlite", "postgres"]

STORE_KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@dataclass
class Database:
    """An empty database for one test: its URL, an engine on it, and (PostgreSQL) its schema.

    ``new_engine()`` makes another engine on the same database (a second pool, as a second
    process would have); the caller disposes it.
    """

    kind: DatabaseKind
    url: str
    engine: AsyncEngine
    schema: str | None = None

    def new_engine(self) -> AsyncEngine:
        return _engine(self.kind, self.url, self.schema)


def _engine(kind: DatabaseKind, url: str, schema: str | None) -> AsyncEngine:
    if kind == "sqlite":
        return create_engine(url)
    return create_async_engine(
        url,
        pool_size=5,
        max_overflow=5,
        connect_args={
            "server_settings": {
                "search_path": schema or "public",
                # Tests need no durability; this makes each commit cheap.
                "synchronous_commit": "off",
            }
        },
    )


async def _admin(statement: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, poolclass=NullPool)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


@asynccontextmanager
async def make_database(
    kind: DatabaseKind, tmp_path: Path, *, migrate: bool = False
) -> AsyncIterator[Database]:
    """A fresh, empty database of ``kind`` (migrated to head when ``migrate``), then cleanup.

    SQLite: a new file under ``tmp_path``. PostgreSQL: a new schema ``t_<hex>`` that every
    connection of the engine uses as its search_path, dropped CASCADE afterwards.
    """
    schema: str | None = None
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / f'copydesk-{uuid.uuid4().hex}.db'}"
    else:
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        schema = f"t_{uuid.uuid4().hex}"
        url = PG_ADMIN_URL
        await _admin(f'CREATE SCHEMA "{schema}"')
    try:
        engine = _engine(kind, url, schema)
        try:
            if migrate:
                await upgrade_to_head(engine)
            yield Database(kind=kind, url=url, engine=engine, schema=schema)
        finally:
            await engine.dispose()
    finally:
        if schema is not None:
            await _admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=STORE_KINDS)
def db_kind(request: pytest.FixtureRequest) -> DatabaseKind:
    kind: DatabaseKind = request.param
    return kind


@pytest.fixture
async def database(db_kind: DatabaseKind, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty (unmigrated) database of each kind."""
    async with make_database(db_kind, tmp_path) as db:
        yield db


@pytest.fixture
async def store(db_kind: DatabaseKind, tmp_path: Path) -> AsyncIterator[SQLStore]:
    """An opened ``SQLStore`` on a fresh database migrated to head, for each dialect."""
    async with make_database(db_kind, tmp_path, migrate=True) as db:
        sql_store = SQLStore(db.url, engine=db.engine)
        await sql_store.open()
        try:
            yield sql_store
        finally:
            await sql_store.close()
