"""A batch is marked completed, and ``batch.completed`` written to the outbox exactly once,
in the transaction that ends its last job: the outcome writer's, the reaper's, a single
job's cancel; never before, never for a cancelled batch, and a later read changes
nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import select, text

from copydesk.batches import NewBatch, NewRow
from copydesk.store import Organization
from copydesk.stores import tables
from copydesk.stores.batches import SQLBatchStore
from copydesk.stores.sql import SQLJobStore, SQLStore
from copydesk.stores.webhooks import SQLWebhookStore
from tests.integration.test_job_store_contract import PROVIDER, new_job, outcome
from tests.integration.test_webhook_outbox import deliveries, endpoint


@pytest.fixture
async def org(store: SQLStore) -> Organization:
    return await store.create_organization("acme")


@pytest.fixture
async def jobs(store: SQLStore) -> SQLJobStore:
    return SQLJobStore(store)


@pytest.fixture
async def batch_store(store: SQLStore) -> SQLBatchStore:
    return SQLBatchStore(store)


@pytest.fixture
async def hooks(store: SQLStore, org: Organization) -> SQLWebhookStore:
    hooks = SQLWebhookStore(store)
    await endpoint(hooks, org, "batch.completed")
    return hooks


async def new_batch(
    batch_store: SQLBatchStore, org: Organization, rows: int, *, max_attempts: int = 3
) -> str:
    batch_id = str(uuid.uuid4())
    await batch_store.create_batch(
        NewBatch(batch_id, org.id, "agent-1", 1, -1),
        [
            NewRow(
                job=new_job(org, priority=-1, max_attempts=max_attempts),
                row_index=i,
                custom_id=f"r{i}",
            )
            for i in range(rows)
        ],
    )
    return batch_id


async def stored(store: SQLStore, batch_id: str) -> Any:
    """The batch's row as stored (not through ``get_batch``, whose read also completes)."""
    async with store.engine.connect() as conn:
        return (
            await conn.execute(select(tables.batches).where(tables.batches.c.id == batch_id))
        ).one()


async def completed_events(store: SQLStore) -> list[Any]:
    return [r for r in await deliveries(store) if r.event_type == "batch.completed"]


async def test_the_outcome_of_the_last_job_completes_the_batch_once(
    store: SQLStore,
    jobs: SQLJobStore,
    batch_store: SQLBatchStore,
    hooks: SQLWebhookStore,
    org: Organization,
) -> None:
    batch_id = await new_batch(batch_store, org, 3)
    first, second, third = await jobs.claim_jobs(PROVIDER, 3, "w1", 30)

    await jobs.finish_attempts(
        [
            outcome(first, "completed", title="t", suggestion="one", prompt_tokens=3),
            outcome(second, "retry", error="busy", error_class="rate_limited"),
        ]
    )
    assert (await stored(store, batch_id)).status == "in_progress"
    [second] = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
    await jobs.finish_attempts([outcome(second, "failed", error="no", error_class="rejected")])
    assert (await stored(store, batch_id)).status == "in_progress"
    assert await completed_events(store) == []

    last = outcome(third, "completed", title="t", suggestion="three", completion_tokens=5)
    await jobs.finish_attempts([last])

    row = await stored(store, batch_id)
    assert row.status == "completed"
    assert row.completed_at == last.ended_at
    [event] = await completed_events(store)
    data = event.payload["data"]
    assert data["id"] == batch_id
    assert data["request_counts"] == {
        "total": 3,
        "in_progress": 0,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
    }
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}
    # A late duplicate and a read change nothing: one event.
    await jobs.finish_attempts([last])
    batch = await batch_store.get_batch(org.id, batch_id)
    assert batch is not None
    assert batch.status == "completed"
    assert len(await completed_events(store)) == 1


async def test_a_retried_batch_completes_again(
    store: SQLStore,
    jobs: SQLJobStore,
    batch_store: SQLBatchStore,
    hooks: SQLWebhookStore,
    org: Organization,
) -> None:
    batch_id = await new_batch(batch_store, org, 1)
    [job] = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
    await jobs.finish_attempts([outcome(job, "failed", error="no", error_class="rejected")])
    assert (await stored(store, batch_id)).status == "completed"

    assert await batch_store.retry_failed(org.id, batch_id, 3) == 1
    assert (await stored(store, batch_id)).status == "in_progress"
    [job] = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
    await jobs.finish_attempts([outcome(job, "completed", title="t", suggestion="s")])

    assert (await stored(store, batch_id)).status == "completed"
    events = await completed_events(store)
    assert [e.payload["data"]["request_counts"]["failed"] for e in events] == [1, 0]


async def test_the_reaper_failing_the_last_job_completes_the_batch(
    store: SQLStore,
    jobs: SQLJobStore,
    batch_store: SQLBatchStore,
    hooks: SQLWebhookStore,
    org: Organization,
) -> None:
    batch_id = await new_batch(batch_store, org, 1, max_attempts=1)
    await jobs.claim_jobs(PROVIDER, 1, "dead", 0.01)
    await asyncio.sleep(0.05)

    [reaped] = await jobs.reap_expired()

    assert reaped.status == "failed"
    assert (await stored(store, batch_id)).status == "completed"
    assert len(await completed_events(store)) == 1


async def test_cancelling_the_last_job_completes_the_batch(
    store: SQLStore,
    jobs: SQLJobStore,
    batch_store: SQLBatchStore,
    hooks: SQLWebhookStore,
    org: Organization,
) -> None:
    batch_id = await new_batch(batch_store, org, 2)
    first, second = await jobs.claim_jobs(PROVIDER, 2, "w1", 30)
    await jobs.finish_attempts([outcome(first, "completed", title="t", suggestion="s")])

    await jobs.cancel_jobs(org.id, [second.id])

    assert (await stored(store, batch_id)).status == "completed"
    [event] = await completed_events(store)
    assert event.payload["data"]["request_counts"]["cancelled"] == 1


async def test_a_cancelled_batch_is_never_completed(
    store: SQLStore,
    jobs: SQLJobStore,
    batch_store: SQLBatchStore,
    hooks: SQLWebhookStore,
    org: Organization,
) -> None:
    batch_id = await new_batch(batch_store, org, 2)
    [running] = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
    await batch_store.cancel_batch(org.id, batch_id)
    # The running attempt's result comes in after the cancel: dropped.
    assert await jobs.finish_attempts([outcome(running, "completed", title="t")]) == [False]

    assert (await stored(store, batch_id)).status == "cancelled"
    batch = await batch_store.get_batch(org.id, batch_id)
    assert batch is not None
    assert batch.status == "cancelled"
    assert await completed_events(store) == []


async def test_jobs_outside_batches_complete_no_batch(
    store: SQLStore,
    jobs: SQLJobStore,
    batch_store: SQLBatchStore,
    hooks: SQLWebhookStore,
    org: Organization,
) -> None:
    batch_id = await new_batch(batch_store, org, 1)
    await jobs.create_jobs([new_job(org, priority=5)])
    [single] = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
    assert single.priority == 5

    await jobs.finish_attempts([outcome(single, "completed", title="t")])

    assert (await stored(store, batch_id)).status == "in_progress"
    assert await completed_events(store) == []


async def test_concurrent_outcomes_of_the_last_jobs_complete_the_batch_once(
    store: SQLStore, batch_store: SQLBatchStore, hooks: SQLWebhookStore, org: Organization
) -> None:
    """Two outcome writers (their own store parts) end the batch's last jobs at the same
    time: one of them marks it, whatever the interleaving."""
    for _ in range(10):
        writers = [SQLJobStore(store), SQLJobStore(store)]
        batch_id = await new_batch(batch_store, org, 2)
        claimed = await writers[0].claim_jobs(PROVIDER, 2, "w1", 30)
        await asyncio.gather(
            *(
                w.finish_attempts([outcome(j, "completed", title="t")])
                for w, j in zip(writers, claimed, strict=True)
            )
        )
        assert (await stored(store, batch_id)).status == "completed"
    events = await completed_events(store)
    assert len(events) == 10
    assert len({e.payload["data"]["id"] for e in events}) == 10


async def test_the_active_check_uses_the_partial_index(store: SQLStore, db_kind: str) -> None:
    if db_kind != "sqlite":
        pytest.skip("SQLite's plan is checked; PostgreSQL picks by statistics")
    async with store.engine.connect() as conn:
        plan = (
            await conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT 1 FROM jobs WHERE jobs.batch_id = 'b' "
                    "AND jobs.status IN ('queued', 'running')"
                )
            )
        ).all()
    assert "ix_jobs_batch_active" in " ".join(str(r) for r in plan)
