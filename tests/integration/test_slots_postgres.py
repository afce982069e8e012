"""``PostgresSlots``: provider slots as advisory locks, shared by processes (instances)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from copydesk.limiters.slots import PostgresSlots, slot_key
from tests.conftest import PG_HOST, PG_PORT, require_service

pytestmark = pytest.mark.postgres

DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"

Factory = Callable[[dict[str, int]], PostgresSlots]


@pytest.fixture
async def slots() -> AsyncIterator[tuple[Factory, str]]:
    """Makes limiters sharing one namespace (advisory locks are per database: a namespace
    of its own keeps this test apart from any other on the same server)."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    namespace = uuid.uuid4().hex
    made: list[PostgresSlots] = []

    def make(limits: dict[str, int]) -> PostgresSlots:
        limiter = PostgresSlots(DSN, limits, namespace=namespace, retry_s=0.005)
        made.append(limiter)
        return limiter

    try:
        yield make, namespace
    finally:
        for limiter in made:
            await limiter.close()


async def locks_held(namespace: str, provider: str) -> dict[int, int]:
    """Slot locks granted in the database, by backend pid."""
    conn = await asyncpg.connect(DSN)
    try:
        rows = await conn.fetch(
            "SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 2 AND classid::bigint = ($1::int::bigint & 4294967295)"
            " GROUP BY pid",
            slot_key(provider, namespace),
        )
        return {int(r["pid"]): int(r["n"]) for r in rows}
    finally:
        await conn.close()


async def test_never_more_than_the_limit_across_two_instances(
    slots: tuple[Factory, str],
) -> None:
    make, namespace = slots
    limit = 7
    a, b = make({"p": limit}), make({"p": limit})
    in_use: set[int] = set()
    peak = 0
    calls = 0

    async def call(limiter: PostgresSlots) -> None:
        nonlocal peak, calls
        slot = await limiter.acquire("p")
        try:
            assert slot not in in_use, f"slot {slot} given twice"
            in_use.add(slot)
            peak = max(peak, len(in_use))
            assert len(in_use) <= limit
            await asyncio.sleep(random.uniform(0, 0.01))
            calls += 1
        finally:
            in_use.discard(slot)
            limiter.release("p", slot)

    async def churn(limiter: PostgresSlots, n: int) -> None:
        for _ in range(n):
            await call(limiter)
            if random.random() < 0.3:
                await asyncio.sleep(random.uniform(0, 0.01))  # let slots go back to the DB

    tasks = [churn(a, 25) for _ in range(10)] + [churn(b, 25) for _ in range(10)]

    async def watch() -> None:
        while True:
            held = await locks_held(namespace, "p")
            assert sum(held.values()) <= limit, held
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher  # raises what the watcher found
    assert calls == 500
    assert peak == limit
    # Nothing waits any more: every slot goes back to the database.
    for _ in range(100):
        if a.held("p") == b.held("p") == 0:
            break
        await asyncio.sleep(0.01)
    assert a.held("p") == b.held("p") == 0
    assert await locks_held(namespace, "p") == {}


async def test_acquire_locks_only_the_slots_it_returns(slots: tuple[Factory, str]) -> None:
    make, namespace = slots
    limiter = make({"p": 50})
    got = await asyncio.gather(*(limiter.acquire("p") for _ in range(3)))
    assert sorted(got) == [0, 1, 2]
    assert list((await locks_held(namespace, "p")).values()) == [3]
    for slot in got:
        limiter.release("p", slot)


async def test_a_finished_call_hands_its_slot_to_a_local_waiter_without_a_query(
    slots: tuple[Factory, str],
) -> None:
    make, _ = slots
    limiter = make({"p": 2})
    first, second = await asyncio.gather(limiter.acquire("p"), limiter.acquire("p"))
    waiting = [asyncio.create_task(limiter.acquire("p")) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in waiting)
    before = limiter.queries
    held = [first, second]
    for task in waiting:  # 50 calls in a row, each on a slot the last one gave back
        limiter.release("p", held.pop(0))
        held.append(await task)
    assert limiter.queries == before, "a local hand-over ran a query"
    assert sorted(held) == sorted([first, second])
    for slot in held:
        limiter.release("p", slot)


async def test_a_cancelled_waiter_takes_no_slot(slots: tuple[Factory, str]) -> None:
    make, namespace = slots
    limiter = make({"p": 1})
    slot = await limiter.acquire("p")
    waiter = asyncio.create_task(limiter.acquire("p"))
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release("p", slot)
    for _ in range(100):
        if not await locks_held(namespace, "p"):
            break
        await asyncio.sleep(0.01)
    assert await locks_held(namespace, "p") == {}
    assert await asyncio.wait_for(limiter.acquire("p"), 5) == 0


async def test_slots_come_back_when_a_worker_connection_dies(
    slots: tuple[Factory, str],
) -> None:
    make, namespace = slots
    a, b = make({"p": 3}), make({"p": 3})
    taken = await asyncio.gather(*(a.acquire("p") for _ in range(3)))
    assert sorted(taken) == [0, 1, 2]
    blocked = asyncio.create_task(b.acquire("p"))
    await asyncio.sleep(0.1)
    assert not blocked.done(), "b got a slot while a held all of them"
    pid = a.backend_pid()
    assert pid is not None
    admin = await asyncpg.connect(DSN)
    try:  # the worker process dies: its backend goes, and its locks with it
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    assert await asyncio.wait_for(blocked, 5) in {0, 1, 2}
    more = await asyncio.wait_for(asyncio.gather(b.acquire("p"), b.acquire("p")), 5)
    assert b.held("p") == 3
    held = await locks_held(namespace, "p")
    assert held == {b.backend_pid(): 3}
    # a's calls end: their slots, no longer locked by a, are dropped rather than reused.
    for slot in taken:
        a.release("p", slot)
    for slot in [blocked.result(), *more]:
        b.release("p", slot)


async def test_unknown_provider_is_not_bounded(slots: tuple[Factory, str]) -> None:
    make, _ = slots
    limiter = make({"p": 1})
    assert await limiter.acquire("other") == -1
    limiter.release("other", -1)
    assert limiter.queries == 0
