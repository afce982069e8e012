"""J3 (an application's jobs, newest first, optional status filter) is served by an index.

The plan is taken for the exact statements ``SQLJobStore.list_jobs`` sends (captured from
the engine), on a table with enough rows that a planner would rather scan if it could.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from copydesk.store import NewJob
from copydesk.stores.sql import SQLJobStore, SQLStore
from copydesk.stores.tables import jobs, organizations

ROWS = 20_000


async def _seed(store: SQLStore) -> tuple[str, str]:
    org_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(organizations),
            [
                {"id": org_id, "name": "a", "created_at": now},
                {"id": other, "name": "b", "created_at": now},
            ],
        )
        statuses = ["completed", "failed", "queued", "running"]
        rows = [
            {
                "id": str(uuid.uuid4()),
                "org_id": org_id if i % 2 else other,
                "agent_id": f"agent-{i % 100}",
                "agent_version": 1,
                "provider": "local",
                "inputs": [],
                "status": statuses[i % 4],
                "priority": 0,
                "fair_rank": i,
                "attempts": 1,
                "max_attempts": 5,
                "available_at": now,
                "created_at": now,
                "updated_at": now,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            for i in range(ROWS)
        ]
        await conn.execute(insert(jobs), rows)
        await conn.execute(text("ANALYZE"))
    return org_id, "agent-3"


def _capture(
    engine: AsyncEngine,
    keep: Callable[[str], bool] = lambda s: "FROM jobs" in s and "count" not in s.lower(),
) -> list[tuple[str, Any]]:
    """The statements (and their parameters) the engine sends from now on that ``keep``
    picks: by default the job reads, without their counts."""
    captured: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if keep(statement):
            captured.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return captured


def _claims(statement: str) -> bool:
    return "UPDATE jobs" in statement


async def _plan(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if engine.dialect.name == "sqlite":
            cursor = await driver.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            rows = await cursor.fetchall()
            return "\n".join(str(r[-1]) for r in rows)
        rows = await driver.fetch("EXPLAIN " + statement, *parameters)
        return "\n".join(r[0] for r in rows)


async def test_list_jobs_uses_an_index_with_and_without_status(store: SQLStore) -> None:
    org_id, agent_id = await _seed(store)
    job_store = SQLJobStore(store)
    captured = _capture(store.engine)
    page = await job_store.list_jobs(org_id, agent_id, None, 0, 50)
    filtered = await job_store.list_jobs(org_id, agent_id, ("completed",), 40, 50)
    assert page.total == ROWS // 100
    assert len(page.items) == 50
    assert [j.created_at for j in page.items] == sorted(
        (j.created_at for j in page.items), reverse=True
    )
    assert all(j.status == "completed" for j in filtered.items)
    assert len(captured) == 2
    for statement, parameters in captured:
        plan = await _plan(store.engine, statement, parameters)
        assert "ix_jobs_org_id_agent_id" in plan, plan
        assert "Seq Scan on jobs" not in plan, plan
        assert "SCAN jobs\n" not in plan + "\n", plan


async def test_new_jobs_keep_the_fair_rank_index_useful(store: SQLStore) -> None:
    """Claiming reads the partial index of queued jobs, not the whole table."""
    org_id, _ = await _seed(store)
    job_store = SQLJobStore(store)
    await job_store.create_jobs([NewJob(str(uuid.uuid4()), org_id, "agent-1", 1, "fresh", [], 3)])
    captured = _capture(store.engine, _claims)
    claimed = await job_store.claim_jobs("fresh", 10, "w1", 30)
    assert [j.agent_id for j in claimed] == ["agent-1"]
    plan = await _plan(store.engine, *captured[0])
    assert "ix_jobs_claim" in plan, plan


async def test_claiming_reads_the_queued_jobs_in_claim_order_without_sorting(
    store: SQLStore,
) -> None:
    """The claim's ORDER BY (priority DESC, fair_rank, seq) is the index's own order, so a
    claim reads its LIMIT rows and stops: no sort of every queued job (SQLite's temporary
    B-tree, PostgreSQL's Sort), whatever the queue's depth."""
    org_id, _ = await _seed(store)
    job_store = SQLJobStore(store)
    await job_store.create_jobs(
        [NewJob(str(uuid.uuid4()), org_id, f"agent-{i}", 1, "deep", [], 3) for i in range(3000)]
    )
    captured = _capture(store.engine, _claims)
    claimed = await job_store.claim_jobs("deep", 10, "w1", 30)
    assert {j.agent_id for j in claimed} == {f"agent-{i}" for i in range(10)}
    plan = await _plan(store.engine, *captured[0])
    assert "ix_jobs_claim" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert "Sort" not in plan, plan


async def test_a_new_jobs_fair_rank_reads_the_active_rows_index(store: SQLStore) -> None:
    """The organisation's newest active rank comes from the partial index of active rows
    (finished rows are not in it), on both dialects: SQLite uses a partial index only when
    the query states its predicate as written."""
    org_id, _ = await _seed(store)
    job_store = SQLJobStore(store)
    captured = _capture(store.engine, lambda s: "max(jobs.fair_rank)" in s)
    created = await job_store.create_jobs([NewJob(str(uuid.uuid4()), org_id, "a", 1, "p", [], 3)])
    # The seed's newest active rank of this organisation is 19,999 (odd ranks are its own;
    # i % 4 == 3 is running): the new job goes right after it.
    assert created[0].fair_rank == ROWS
    assert len(captured) == 1
    plan = await _plan(store.engine, *captured[0])
    assert "ix_jobs_active_org_id_fair_rank" in plan, plan
    assert "Seq Scan on jobs" not in plan, plan
    assert "SCAN jobs\n" not in plan + "\n", plan
    assert "'queued'" in await _index_sql(store, "ix_jobs_active_org_id_fair_rank")


async def _index_sql(store: SQLStore, name: str) -> str:
    """The index's definition as the database has it (after the migrations)."""
    async with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
        return str((await conn.execute(text(query), {"name": name})).scalar_one())


async def test_starting_jobs_finds_them_by_id_whatever_the_statistics(store: SQLStore) -> None:
    """The start batch's read finds its rows through the id index, not by reading every
    queued or running job through the partial indexes, on a table never analyzed (a
    burst into a new deployment, or with autovacuum off): without statistics PostgreSQL
    guesses that few rows are queued and preferred ix_jobs_claim and ix_jobs_lease."""
    org_id = (await store.create_organization("a")).id
    job_store = SQLJobStore(store)
    created = []
    for _ in range(30):
        created += await job_store.create_jobs(
            [NewJob(str(uuid.uuid4()), org_id, "a", 1, "p", [], 3) for _ in range(1000)]
        )
    captured = _capture(
        store.engine, lambda s: "SELECT jobs.seq, jobs.status, jobs.lease_owner" in s
    )
    started = await job_store.start_jobs([j.id for j in created[:100]], "w1", 30)
    assert [j.id for j in started] == [j.id for j in created[:100]]
    assert all(j.status == "running" for j in started)
    plan = await _plan(store.engine, *captured[0])
    assert "ix_jobs_claim" not in plan, plan
    assert "ix_jobs_lease" not in plan, plan
    if store.engine.dialect.name == "postgresql":
        assert "uq_jobs_id" in plan, plan
