"""``PostgresFlowControl`` shared by two instances (two engines: two worker processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from copydesk.flow import Limits, Permit
from copydesk.limiters.postgres import PostgresFlowControl
from copydesk.stores.sql import SQLStore
from copydesk.stores.tables import rate_events
from tests.integration.conftest import Database, make_database

pytestmark = pytest.mark.postgres

LIMITS = {
    "rpm": Limits(requests_per_minute=5),
    "tpm": Limits(tokens_per_minute=100),
    "open": Limits(),
}


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    async with make_database("postgres", tmp_path, migrate=True) as db:
        yield db


@pytest.fixture
async def pair(
    database: Database,
) -> AsyncIterator[tuple[PostgresFlowControl, PostgresFlowControl]]:
    """Two flow controls on the same database, each with its own engine."""
    second_engine = database.new_engine()
    stores = [
        SQLStore(database.url, engine=database.engine),
        SQLStore(database.url, engine=second_engine),
    ]
    try:
        for store in stores:
            await store.open()
        yield PostgresFlowControl(stores[0], LIMITS), PostgresFlowControl(stores[1], LIMITS)
    finally:
        await second_engine.dispose()


async def tokens_recorded(database: Database, provider: str) -> list[int]:
    async with database.engine.connect() as conn:
        rows = await conn.execute(
            select(rate_events.c.tokens)
            .where(rate_events.c.provider == provider)
            .order_by(rate_events.c.id)
        )
        return [r.tokens for r in rows]


async def test_the_request_limit_is_shared_across_instances(
    database: Database, pair: tuple[PostgresFlowControl, PostgresFlowControl]
) -> None:
    one, two = pair

    async def attempt(control: PostgresFlowControl) -> Permit | None:
        try:
            return await asyncio.wait_for(control.acquire("rpm", 1), 1.0)
        except TimeoutError:
            return None

    results = await asyncio.gather(*(attempt(c) for c in (one, two) * 4))

    granted = [p for p in results if p is not None]
    assert len(granted) == 5
    assert results.count(None) == 3
    assert len({p.ref for p in granted}) == 5
    assert await tokens_recorded(database, "rpm") == [1] * 5


async def test_a_waiter_goes_when_the_oldest_request_leaves_the_window(
    database: Database, pair: tuple[PostgresFlowControl, PostgresFlowControl]
) -> None:
    one, two = pair
    for _ in range(5):
        await one.acquire("rpm", 1)
    # Pretend those five started 59.3 s ago: the next one may start in 0.7 s.
    async with database.engine.begin() as conn:
        await conn.execute(
            update(rate_events).values(
                at=rate_events.c.at - func.make_interval(0, 0, 0, 0, 0, 0, 59.3)
            )
        )
    started = time.monotonic()

    await asyncio.wait_for(two.acquire("rpm", 1), 5.0)

    waited = time.monotonic() - started
    assert 0.5 <= waited < 2.0
    # The old ones leave the log as they age out; the window never holds more than five.
    assert 1 <= len(await tokens_recorded(database, "rpm")) <= 5


async def test_settle_corrects_the_token_count_for_every_instance(
    database: Database, pair: tuple[PostgresFlowControl, PostgresFlowControl]
) -> None:
    one, two = pair
    permit = await one.acquire("tpm", 80)
    assert permit.tokens == 80

    with pytest.raises(TimeoutError):  # 80 + 50 is over 100 a minute
        await asyncio.wait_for(two.acquire("tpm", 50), 0.5)

    await one.settle(permit, 10)  # the request used only 10

    second = await asyncio.wait_for(two.acquire("tpm", 50), 0.5)
    assert await tokens_recorded(database, "tpm") == [10, 50]
    await two.settle(second, 50)  # no change: nothing to write
    assert await tokens_recorded(database, "tpm") == [10, 50]


async def test_a_request_over_the_token_limit_is_cut_to_it(
    database: Database, pair: tuple[PostgresFlowControl, PostgresFlowControl]
) -> None:
    one, two = pair

    permit = await one.acquire("tpm", 500)

    assert permit.tokens == 100
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(two.acquire("tpm", 1), 0.5)
    assert await tokens_recorded(database, "tpm") == [100]


async def test_unlimited_providers_record_nothing(
    database: Database, pair: tuple[PostgresFlowControl, PostgresFlowControl]
) -> None:
    one, two = pair

    permits = [await c.acquire(p, 10**6) for c in (one, two) for p in ("open", "other")]

    assert [p.ref for p in permits] == [None] * 4
    async with database.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(rate_events))).scalar_one()
    assert count == 0
