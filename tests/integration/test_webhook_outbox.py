"""The webhook outbox on SQLite and PostgreSQL: events are written by the outcome's own
transaction, only for subscribed endpoints; deliveries are claimed once, retried, logged
and redelivered."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from copydesk.store import Job, Organization
from copydesk.stores import tables
from copydesk.stores.sql import SQLJobStore, SQLStore
from copydesk.stores.webhooks import SQLWebhookStore
from copydesk.webhooks import Attempted, NewEndpoint, new_secret
from tests.integration.test_job_store_contract import PROVIDER, claim_one, new_job, outcome


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def jobs(store: SQLStore) -> SQLJobStore:
    return SQLJobStore(store)


@pytest.fixture
async def hooks(store: SQLStore) -> SQLWebhookStore:
    return SQLWebhookStore(store)


@pytest.fixture
async def org(store: SQLStore) -> Organization:
    return await store.create_organization("acme")


async def endpoint(hooks: SQLWebhookStore, org: Organization, *events: str) -> str:
    created = await hooks.create_endpoint(
        NewEndpoint(
            id=f"ep-{len(await hooks.list_endpoints(org.id))}-{org.name}",
            org_id=org.id,
            url="https://hooks.example.com/in",
            events=list(events),
            description=None,
            secret=new_secret(),
        )
    )
    return created.id


async def running(jobs: SQLJobStore, org: Organization, count: int = 1) -> list[Job]:
    await jobs.create_jobs([new_job(org) for _ in range(count)])
    return [await claim_one(jobs) for _ in range(count)]


async def deliveries(store: SQLStore) -> list[Any]:
    async with store.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(tables.webhook_deliveries).order_by(tables.webhook_deliveries.c.seq)
                )
            ).all()
        )


async def test_outcomes_write_one_delivery_per_subscribed_endpoint(
    store: SQLStore, jobs: SQLJobStore, hooks: SQLWebhookStore, org: Organization
) -> None:
    both = await endpoint(hooks, org, "job.completed", "job.failed")
    failed_only = await endpoint(hooks, org, "job.failed")
    await endpoint(hooks, org, "batch.completed")
    done, broken, retried = await running(jobs, org, 3)

    await jobs.finish_attempts(
        [
            outcome(done, "completed", title="Copy", suggestion="Fresh bread."),
            outcome(broken, "failed", error="rejected", error_class="rejected"),
            outcome(retried, "retry", error="busy", available_at=now()),
        ]
    )

    rows = await deliveries(store)
    got = sorted((r.endpoint_id, r.event_type, r.payload["data"]["id"]) for r in rows)
    assert got == sorted(
        [
            (both, "job.completed", done.id),
            (both, "job.failed", broken.id),
            (failed_only, "job.failed", broken.id),
        ]
    )
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)
    # One event id per event, the same for every endpoint that receives it.
    failed_ids = {r.event_id for r in rows if r.event_type == "job.failed"}
    assert len(failed_ids) == 1
    assert len({r.id for r in rows}) == 3
    completed = next(r for r in rows if r.event_type == "job.completed").payload
    assert completed["type"] == "job.completed"
    assert completed["data"]["status"] == "completed"
    assert completed["data"]["data"] == {"title": "Copy", "suggestion": "Fresh bread."}
    failed = next(r for r in rows if r.event_type == "job.failed").payload
    assert failed["data"]["error"] == "rejected"


async def test_no_delivery_without_a_subscribed_endpoint(
    store: SQLStore, jobs: SQLJobStore, hooks: SQLWebhookStore, org: Organization
) -> None:
    other = await store.create_organization("globex")
    await endpoint(hooks, other, "job.completed")  # another organisation's endpoint
    await endpoint(hooks, org, "job.failed")  # subscribed to something else
    [job] = await running(jobs, org)

    assert await jobs.finish_attempts([outcome(job, "completed", title="t")]) == [True]

    assert await deliveries(store) == []


async def test_the_event_shares_the_outcomes_transaction(
    store: SQLStore, jobs: SQLJobStore, hooks: SQLWebhookStore, org: Organization
) -> None:
    await endpoint(hooks, org, "job.completed")
    done, retried = await running(jobs, org, 2)

    async def broken_hook(_conn: Any, _jobs: list[Job]) -> None:
        raise RuntimeError("queue down")

    with pytest.raises(RuntimeError):
        await jobs.finish_attempts(
            [
                outcome(done, "completed", title="t"),
                outcome(retried, "retry", error="busy", available_at=now()),
            ],
            broken_hook,  # runs after the outbox insert, in the same transaction
        )

    assert await deliveries(store) == []
    assert (await jobs.get_job(None, done.id)).status == "running"  # type: ignore[union-attr]

    await jobs.finish_attempts([outcome(done, "completed", title="t")])
    assert [r.event_type for r in await deliveries(store)] == ["job.completed"]


async def test_claim_finish_retry_and_redeliver(
    store: SQLStore, jobs: SQLJobStore, hooks: SQLWebhookStore, org: Organization
) -> None:
    target = await endpoint(hooks, org, "job.completed")
    [job] = await running(jobs, org)
    await jobs.finish_attempts([outcome(job, "completed", title="t")])

    # Concurrent claimers: the delivery is handed out once.
    claims = await asyncio.gather(*(hooks.claim_deliveries(10, 30) for _ in range(4)))
    claimed = [due for batch in claims for due in batch]
    assert len(claimed) == 1
    due = claimed[0]
    assert due.url == "https://hooks.example.com/in"
    assert due.secret.startswith("whsec_")
    assert due.delivery.attempts == 1
    assert await hooks.claim_deliveries(10, 30) == []  # leased

    later = now() + timedelta(seconds=60)
    await hooks.finish_deliveries(
        [Attempted(due.delivery.id, "pending", now(), 500, "the endpoint answered 500", later)]
    )
    assert await hooks.claim_deliveries(10, 30) == []  # not due yet
    [logged] = await hooks.list_deliveries(org.id, target, 10)
    assert (logged.status, logged.attempts, logged.last_status) == ("pending", 1, 500)
    assert logged.next_attempt_at is not None
    assert logged.next_attempt_at > now()

    again = await hooks.redeliver(org.id, logged.id, extra_attempts=3)
    assert again is not None
    assert again.max_attempts == 4
    [retry] = await hooks.claim_deliveries(10, 30)
    assert retry.delivery.event_id == due.delivery.event_id
    assert retry.delivery.attempts == 2
    await hooks.finish_deliveries([Attempted(retry.delivery.id, "delivered", now(), 204)])
    [logged] = await hooks.list_deliveries(org.id, target, 10)
    assert (logged.status, logged.last_status, logged.last_error) == ("delivered", 204, None)
    assert logged.delivered_at is not None

    # Scoped by organisation: another one sees nothing and cannot redeliver.
    other = await store.create_organization("globex")
    assert await hooks.list_deliveries(other.id, target, 10) == []
    assert await hooks.redeliver(other.id, logged.id, 3) is None
    assert await hooks.get_endpoint(other.id, target) is None
    assert not await hooks.delete_endpoint(other.id, target)

    assert await hooks.delete_endpoint(org.id, target)
    async with store.engine.connect() as conn:
        count = select(func.count()).select_from(tables.webhook_deliveries)
        assert (await conn.execute(count)).scalar_one() == 0


async def test_a_reaped_job_out_of_attempts_announces_job_failed(
    store: SQLStore, jobs: SQLJobStore, hooks: SQLWebhookStore, org: Organization
) -> None:
    await endpoint(hooks, org, "job.failed")
    await jobs.create_jobs([new_job(org, max_attempts=1)])
    await jobs.claim_jobs(PROVIDER, 1, "w1", lease_s=0.01)
    await asyncio.sleep(0.05)

    [reaped] = await jobs.reap_expired()

    assert reaped.status == "failed"
    [row] = await deliveries(store)
    assert (row.event_type, row.payload["data"]["id"]) == ("job.failed", reaped.id)
