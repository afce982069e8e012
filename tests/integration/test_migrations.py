"""The migrations arrive exactly at the models, on an empty SQLite and an empty PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from copydesk.migrations import current_revision, head_revision, upgrade_to_head
from copydesk.stores.sql import SQLStore
from copydesk.stores.tables import metadata
from tests.integration.conftest import Database


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_empty_database_has_no_tables_and_no_revision(database: Database) -> None:
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_tables) == set()
    assert await current_revision(database.engine) is None


async def test_upgrade_to_head_matches_the_models(database: Database) -> None:
    await upgrade_to_head(database.engine)

    async with database.engine.connect() as conn:
        assert await conn.run_sync(_tables) == set(metadata.tables) | {"alembic_version"}
        assert await conn.run_sync(_diff) == []
    assert await current_revision(database.engine) == head_revision()


async def test_upgrading_twice_is_a_no_op(database: Database) -> None:
    await upgrade_to_head(database.engine)
    store = SQLStore(database.url, engine=database.engine)
    await store.open()
    org = await store.create_organization("acme")

    await upgrade_to_head(database.engine)

    assert await current_revision(database.engine) == head_revision()
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
    assert await store.list_organizations() == [org]
    await store.close()


async def test_the_comparison_sees_a_schema_that_drifted(database: Database) -> None:
    # Guards the tests above against a comparison that could never find anything.
    await upgrade_to_head(database.engine)
    async with database.engine.connect() as conn:
        before = [(op[0], op[1].name) for op in await conn.run_sync(_diff)]
    async with database.engine.begin() as conn:
        await conn.execute(text("DROP INDEX ix_generations_org_id_agent_id"))

    async with database.engine.connect() as conn:
        after = [(op[0], op[1].name) for op in await conn.run_sync(_diff)]
    assert [op for op in after if op not in before] == [
        ("add_index", "ix_generations_org_id_agent_id")
    ]
