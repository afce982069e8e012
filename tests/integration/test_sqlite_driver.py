"""``stores.sqlite_driver``: SQLAlchemy on aiosqlite with one hand-off to the connection's
thread per statement, against a real SQLite file, through the engine the store uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from copydesk.stores import sqlite_driver
from copydesk.stores.sql import SQLITE_READERS, SQLStore, create_engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)"))
    yield engine
    await engine.dispose()


@pytest.fixture
def hand_offs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls sent to a connection's thread, by name, from now on."""
    sent: list[str] = []
    real = sqlite_driver.Connection._execute

    async def counted(self: sqlite_driver.Connection, fn: Callable[..., Any], *a: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *a)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(sqlite_driver.Connection, "_execute", counted)
    return sent


async def test_a_read_is_one_hand_off_and_a_write_adds_only_its_commit(
    engine: AsyncEngine, hand_offs: list[str]
) -> None:
    async with engine.begin() as conn:  # warm the pool: the connection exists already
        await conn.execute(text("SELECT 1"))
    hand_offs.clear()

    async with engine.begin() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM t"))).all()
    read = list(hand_offs)
    hand_offs.clear()
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
    write = list(hand_offs)

    assert rows == [(0,)]
    # Before: cursor, execute, fetchall, close, commit and the pool's rollback (six).
    assert read == ["run"]
    assert write == ["run", "commit"]


async def test_statements_answer_as_the_sqlite3_driver_does(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        many = await conn.execute(
            text("INSERT INTO t (name) VALUES (:name)"), [{"name": "b"}, {"name": "c"}]
        )
        updated = (
            await conn.execute(
                text("UPDATE t SET name = name || '!' WHERE name != 'a' RETURNING id, name")
            )
        ).all()
        changed = await conn.execute(text("UPDATE t SET name = upper(name)"))

    assert inserted.lastrowid == 1
    assert many.rowcount == 2
    assert sorted(updated) == [(2, "b!"), (3, "c!")]
    assert changed.rowcount == 3


async def test_a_failed_statement_raises_and_its_transaction_rolls_back(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))

    async def insert_b_then_a_again() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name) VALUES ('b')"))
            await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))

    with pytest.raises(IntegrityError, match="UNIQUE"):
        await insert_b_then_a_again()

    async with engine.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
    assert names == ["a"]  # 'b' went with the failed transaction


async def test_sqlite_reads_run_a_few_at_a_time_and_a_nested_read_never_queues(
    tmp_path: Path,
) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite'}")
    await store.open()
    release = asyncio.Event()
    inside = 0
    most = 0

    async def hold() -> None:
        nonlocal inside, most
        async with store._read() as conn:
            inside += 1
            most = max(most, inside)
            await conn.execute(text("SELECT 1"))
            await release.wait()
            # Nested in a task that holds a reader slot: goes through at once.
            async with store._read() as nested:
                await nested.execute(text("SELECT 2"))
            inside -= 1

    try:
        holders = [asyncio.create_task(hold()) for _ in range(SQLITE_READERS + 3)]
        await asyncio.sleep(0.2)
        assert inside == SQLITE_READERS  # the others wait for a slot, holding nothing
        release.set()
        await asyncio.wait_for(asyncio.gather(*holders), 10)
        assert most == SQLITE_READERS
    finally:
        await store.close()
