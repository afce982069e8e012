"""The ``JobStore`` contract, run against ``SQLJobStore`` on SQLite and on PostgreSQL.

Only the port's methods are used to act; the enqueue hooks look into the transaction
they are given. What one dialect does, the other must do.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import String, func, select

from copydesk.errors import JobNotFound, JobNotRetryable
from copydesk.store import Job, NewJob, Organization, Outcome
from copydesk.stores import tables
from copydesk.stores.sql import SQLJobStore, SQLStore
from copydesk.stores.tables import _sqlite_text

AGENT = "agent-1"
PROVIDER = "fake"


def now() -> datetime:
    return datetime.now(UTC)


def new_job(
    org: Organization,
    *,
    agent_id: str = AGENT,
    provider: str = PROVIDER,
    priority: int = 0,
    max_attempts: int = 3,
) -> NewJob:
    return NewJob(
        id=str(uuid.uuid4()),
        org_id=org.id,
        agent_id=agent_id,
        agent_version=1,
        provider=provider,
        inputs=[{"id": "topic", "value": ["bread"]}],
        max_attempts=max_attempts,
        priority=priority,
    )


def outcome(job: Job, kind: str, **changes: Any) -> Outcome:
    """The end of ``job``'s current attempt, as its worker would write it."""
    assert job.lease_owner is not None
    assert job.started_at is not None
    base = Outcome(
        job_id=job.id,
        kind=kind,
        owner=job.lease_owner,
        attempt=job.attempts,
        started_at=job.started_at,
        ended_at=now(),
    )
    return replace(base, **changes)


@pytest.fixture
async def jobs(store: SQLStore) -> SQLJobStore:
    return SQLJobStore(store)


@pytest.fixture
async def org(store: SQLStore) -> Organization:
    return await store.create_organization("acme")


@pytest.fixture
async def other_org(store: SQLStore) -> Organization:
    return await store.create_organization("globex")


async def create(jobs: SQLJobStore, org: Organization, count: int, **kw: Any) -> list[Job]:
    return await jobs.create_jobs([new_job(org, **kw) for _ in range(count)])


async def claim_one(jobs: SQLJobStore, owner: str = "w1", lease_s: float = 30.0) -> Job:
    [job] = await jobs.claim_jobs(PROVIDER, 1, owner, lease_s)
    return job


async def get(jobs: SQLJobStore, job: Job) -> Job:
    stored = await jobs.get_job(None, job.id)
    assert stored is not None
    return stored


# --- create, read, list -------------------------------------------------------------


async def test_create_jobs_stores_queued_jobs(jobs: SQLJobStore, org: Organization) -> None:
    before = now()
    new = new_job(org, priority=2, max_attempts=4)

    [job] = await jobs.create_jobs([new])

    assert (job.id, job.org_id, job.agent_id, job.agent_version) == (new.id, org.id, AGENT, 1)
    assert (job.provider, job.inputs, job.priority) == (PROVIDER, new.inputs, 2)
    assert (job.status, job.attempts, job.max_attempts) == ("queued", 0, 4)
    assert before <= job.created_at == job.available_at <= now()
    assert (job.lease_owner, job.result_title, job.error) == (None, None, None)
    stored = await jobs.get_job(org.id, job.id)
    assert stored == job
    assert await jobs.list_attempts(job.id) == []


async def test_fair_ranks_are_counted_per_organisation(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    a = await create(jobs, org, 3)
    # One batch holding both organisations ranks each within its own backlog.
    b1, a4, b2 = await jobs.create_jobs([new_job(other_org), new_job(org), new_job(other_org)])

    assert [j.fair_rank for j in (*a, a4)] == [1, 2, 3, 4]
    assert [j.fair_rank for j in (b1, b2)] == [1, 2]
    assert [(await get(jobs, j)).fair_rank for j in (a4, b2)] == [4, 2]
    claimed = [(await claim_one(jobs)).id for _ in range(6)]

    # Rank 1 of each organisation first (by creation), then rank 2, ...
    assert claimed == [a[0].id, b1.id, a[1].id, b2.id, a[2].id, a4.id]


async def test_fair_rank_counts_only_the_organisations_active_jobs(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    for _ in range(3):  # acme's first three jobs all finish
        await create(jobs, org, 1)
        await jobs.finish_attempts([outcome(await claim_one(jobs), "completed", title="t")])
    b = await create(jobs, other_org, 2)

    [late_a] = await create(jobs, org, 1)

    assert [j.fair_rank for j in (*b, late_a)] == [1, 2, 1]
    # acme has no active job left, so its new job ranks first again, beside globex's first.
    claimed = await jobs.claim_jobs(PROVIDER, 2, "w1", 30)
    assert {j.id for j in claimed} == {b[0].id, late_a.id}


async def test_enqueue_hook_runs_inside_the_same_transaction(
    jobs: SQLJobStore, org: Organization
) -> None:
    seen: list[tuple[list[str], int]] = []

    async def enqueue(conn: Any, created: list[Job]) -> None:
        ids = [j.id for j in created]
        count = (
            await conn.execute(
                select(func.count()).select_from(tables.jobs).where(tables.jobs.c.id.in_(ids))
            )
        ).scalar_one()
        seen.append((ids, count))

    created = await jobs.create_jobs([new_job(org), new_job(org)], enqueue)

    assert seen == [([j.id for j in created], 2)]


async def test_a_failing_enqueue_hook_stores_nothing(jobs: SQLJobStore, org: Organization) -> None:
    async def enqueue(conn: Any, created: list[Job]) -> None:
        raise RuntimeError("queue entry refused")

    new = [new_job(org), new_job(org)]
    with pytest.raises(RuntimeError, match="queue entry refused"):
        await jobs.create_jobs(new, enqueue)

    assert await jobs.get_job(None, new[0].id) is None
    assert (await jobs.list_jobs(org.id, AGENT, None, 0, 10)).total == 0
    assert await jobs.claim_jobs(PROVIDER, 10, "w1", 30) == []


async def test_get_job_is_scoped_by_organisation(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    [job] = await create(jobs, org, 1)

    assert await jobs.get_job(org.id, job.id) == job
    assert await jobs.get_job(other_org.id, job.id) is None
    assert await jobs.get_job(None, job.id) == job  # workers read without an organisation
    assert await jobs.get_job(org.id, str(uuid.uuid4())) is None


async def test_list_jobs_newest_first_with_filter_offset_limit_and_total(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    made = [(await create(jobs, org, 1))[0] for _ in range(5)]
    await create(jobs, org, 2, agent_id="agent-2")
    await create(jobs, other_org, 2)
    # made[0] completes, made[1] fails, made[2] runs; made[3] and made[4] stay queued.
    first, second, third = [await jobs.start_job(j.id, "w1", 30) for j in made[:3]]
    assert first is not None
    assert second is not None
    assert third is not None
    await jobs.finish_attempts([outcome(first, "completed", title="t")])
    await jobs.finish_attempts([outcome(second, "failed", error="no")])
    newest_first = [j.id for j in reversed(made)]

    page = await jobs.list_jobs(org.id, AGENT, None, 0, 10)
    assert ([j.id for j in page.items], page.total) == (newest_first, 5)

    page = await jobs.list_jobs(org.id, AGENT, None, 1, 2)
    assert ([j.id for j in page.items], page.total) == (newest_first[1:3], 5)

    page = await jobs.list_jobs(org.id, AGENT, ("queued", "running"), 0, 10)
    assert ([j.id for j in page.items], page.total) == (newest_first[:3], 3)

    page = await jobs.list_jobs(org.id, AGENT, ("completed", "failed", "cancelled"), 1, 10)
    assert ([j.id for j in page.items], page.total) == ([made[0].id], 2)
    assert [j.status for j in page.items] == ["completed"]

    page = await jobs.list_jobs(other_org.id, AGENT, ("completed",), 0, 10)
    assert (page.items, page.total) == ([], 0)


# --- claiming -----------------------------------------------------------------------


async def test_claim_takes_only_due_queued_jobs_of_the_provider(
    jobs: SQLJobStore, org: Organization
) -> None:
    [due] = await create(jobs, org, 1)
    [other_provider] = await create(jobs, org, 1, provider="other")
    [later] = await create(jobs, org, 1)
    [done] = await create(jobs, org, 1)
    # ``later`` is retried a minute from now; ``done`` completes.
    for job in await jobs.claim_jobs(PROVIDER, 3, "setup", 30):
        if job.id == later.id:
            await jobs.finish_attempts(
                [outcome(job, "retry", available_at=now() + timedelta(minutes=1))]
            )
        elif job.id == done.id:
            await jobs.finish_attempts([outcome(job, "completed", title="t")])
        else:
            await jobs.finish_attempts([outcome(job, "retry", available_at=now())])
    before = now()

    claimed = await jobs.claim_jobs(PROVIDER, 10, "w1", 30)

    assert [j.id for j in claimed] == [due.id]
    [job] = claimed
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w1", 2)
    assert job.started_at is not None
    assert job.lease_expires_at is not None
    assert before <= job.started_at <= now()
    assert timedelta(seconds=29) < job.lease_expires_at - job.started_at <= timedelta(seconds=30)
    assert await get(jobs, job) == job
    assert (await get(jobs, other_provider)).status == "queued"
    assert [j.id for j in await jobs.claim_jobs("other", 10, "w1", 30)] == [other_provider.id]
    assert await jobs.claim_jobs(PROVIDER, 10, "w2", 30) == []


async def test_claim_never_hands_out_a_job_twice(jobs: SQLJobStore, org: Organization) -> None:
    created = await create(jobs, org, 40)

    first = await jobs.claim_jobs(PROVIDER, 10, "w1", 30)
    concurrent = await asyncio.gather(
        *(jobs.claim_jobs(PROVIDER, 10, f"w{i}", 30) for i in range(2, 6))
    )

    batches = [first, *concurrent]
    claimed = [j.id for batch in batches for j in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert set(claimed) == {j.id for j in created}
    for batch in batches:
        for job in batch:
            stored = await get(jobs, job)
            assert (stored.lease_owner, stored.attempts) == (job.lease_owner, 1)
    assert await jobs.claim_jobs(PROVIDER, 10, "w9", 30) == []


async def test_an_organisations_new_jobs_queue_behind_its_own_older_ones(
    jobs: SQLJobStore, org: Organization
) -> None:
    first = await create(jobs, org, 10)
    for _ in range(5):  # ranks 1..5 finish; 6..10 are still queued
        await jobs.finish_attempts([outcome(await claim_one(jobs), "completed", title="t")])

    [late] = await create(jobs, org, 1)

    # Behind its own newest active job (10), not at "active count + 1" (6), which
    # would let it overtake ranks 6..10 of the same organisation.
    assert late.fair_rank == 11
    claimed = await jobs.claim_jobs(PROVIDER, 6, "w1", 30)
    assert [j.id for j in claimed] == [j.id for j in first[5:]] + [late.id]


async def test_a_newcomer_enters_at_the_front_of_the_queue(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    a = await create(jobs, org, 10)
    for _ in range(6):  # the queue's front moves to rank 7
        await jobs.finish_attempts([outcome(await claim_one(jobs), "completed", title="t")])

    b = await create(jobs, other_org, 2)

    assert [j.fair_rank for j in b] == [7, 8]
    claimed = await jobs.claim_jobs(PROVIDER, 4, "w1", 30)
    assert {j.id for j in claimed} == {a[6].id, a[7].id, b[0].id, b[1].id}


async def test_claim_is_fair_between_organisations(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    a = await create(jobs, org, 50)
    b = await create(jobs, other_org, 3)

    claimed = await jobs.claim_jobs(PROVIDER, 6, "w1", 30)

    # Ranks interleave: acme's first three and all of globex's three, not acme's first six.
    assert {j.id for j in claimed} == {j.id for j in [*a[:3], *b]}


async def test_claim_takes_higher_priority_first(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 5)
    [urgent] = await create(jobs, org, 1, priority=5)

    first = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
    batch = await jobs.claim_jobs(PROVIDER, 2, "w1", 30)

    assert [j.id for j in first] == [urgent.id]
    assert urgent.id not in {j.id for j in batch}


async def test_claim_with_no_room_takes_nothing(jobs: SQLJobStore, org: Organization) -> None:
    [job] = await create(jobs, org, 1)

    assert await jobs.claim_jobs(PROVIDER, 0, "w1", 30) == []
    assert (await get(jobs, job)).status == "queued"


async def test_the_workers_store_calls_leave_no_statement_garbage(
    jobs: SQLJobStore, org: Organization
) -> None:
    # Claim, start, renew, the cancel check and the outcome batch reuse statements built
    # once: building them per call left cyclic garbage (bind parameters, array types,
    # subqueries) that lengthened the collector's passes in a busy worker.
    queued = await create(jobs, org, 6)

    async def one_round() -> None:
        [claimed] = await jobs.claim_jobs(PROVIDER, 1, "w1", 30)
        other = next(j for j in queued if j.id != claimed.id)
        queued[:] = [j for j in queued if j.id not in (claimed.id, other.id)]
        [started] = await jobs.start_jobs([other.id], "w1", 30)
        ids = [claimed.id, started.id]
        assert await jobs.renew_leases("w1", ids, 30) == 2
        assert await jobs.cancelled_among(ids) == []
        done = [outcome(claimed, "completed"), outcome(started, "completed")]
        assert await jobs.finish_attempts(done) == [True, True]

    await one_round()  # builds what is built once
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await one_round()
        await one_round()
        gc.collect()
        statements = [o for o in gc.garbage if type(o).__module__.startswith("sqlalchemy.sql")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert statements == []


# --- start_job ------------------------------------------------------------------------


async def test_start_job_takes_a_queued_job(jobs: SQLJobStore, org: Organization) -> None:
    [job] = await create(jobs, org, 1)

    started = await jobs.start_job(job.id, "w1", 30)

    assert started is not None
    assert (started.status, started.lease_owner, started.attempts) == ("running", "w1", 1)
    assert started.lease_expires_at is not None
    assert await get(jobs, job) == started


async def test_start_job_refuses_a_live_lease_and_finished_jobs(
    jobs: SQLJobStore, org: Organization
) -> None:
    live, done, failed = await create(jobs, org, 3)
    running = await jobs.start_job(live.id, "w1", 30)
    assert running is not None
    finished = await jobs.start_job(done.id, "w1", 30)
    assert finished is not None
    await jobs.finish_attempts([outcome(finished, "completed", title="t")])
    failing = await jobs.start_job(failed.id, "w1", 30)
    assert failing is not None
    await jobs.finish_attempts([outcome(failing, "failed", error="no")])

    assert await jobs.start_job(live.id, "w2", 30) is None
    assert await jobs.start_job(done.id, "w2", 30) is None
    assert await jobs.start_job(failed.id, "w2", 30) is None
    assert await jobs.start_job(str(uuid.uuid4()), "w2", 30) is None
    assert await get(jobs, live) == running
    assert (await get(jobs, done)).status == "completed"
    assert (await get(jobs, failed)).status == "failed"


async def test_start_job_takes_over_an_expired_lease(jobs: SQLJobStore, org: Organization) -> None:
    [job] = await create(jobs, org, 1)
    assert await jobs.start_job(job.id, "dead", 0.01) is not None
    await asyncio.sleep(0.05)

    taken = await jobs.start_job(job.id, "w2", 30)

    assert taken is not None
    assert (taken.status, taken.lease_owner, taken.attempts) == ("running", "w2", 2)


# --- leases ---------------------------------------------------------------------------


async def test_renew_leases_extends_only_the_owners_running_jobs(
    jobs: SQLJobStore, org: Organization
) -> None:
    a1, a2, b1, queued = await create(jobs, org, 4)
    for job, owner in ((a1, "w1"), (a2, "w1"), (b1, "w2")):
        assert await jobs.start_job(job.id, owner, 5) is not None
    before = {j.id: (await get(jobs, j)).lease_expires_at for j in (a1, a2, b1)}

    renewed = await jobs.renew_leases("w1", [a1.id, a2.id, b1.id, queued.id], 300)

    assert renewed == 2
    for job in (a1, a2):
        lease = (await get(jobs, job)).lease_expires_at
        assert lease is not None
        assert lease - now() > timedelta(seconds=250)
    assert (await get(jobs, b1)).lease_expires_at == before[b1.id]
    assert (await get(jobs, queued)).status == "queued"
    assert (await get(jobs, queued)).lease_expires_at is None
    assert await jobs.renew_leases("w1", [], 300) == 0


async def test_reap_expired_requeues_once_and_records_the_lost_attempt(
    jobs: SQLJobStore, org: Organization
) -> None:
    expired, live = await create(jobs, org, 2)
    assert await jobs.start_job(expired.id, "dead", 0.01) is not None
    assert await jobs.start_job(live.id, "w1", 30) is not None
    await asyncio.sleep(0.05)
    hooked: list[list[str]] = []

    async def enqueue(conn: Any, reaped: list[Job]) -> None:
        hooked.append([j.id for j in reaped])

    reaped = await jobs.reap_expired(enqueue)

    assert [j.id for j in reaped] == [expired.id]
    assert hooked == [[expired.id]]
    job = await get(jobs, expired)
    assert (job.status, job.lease_owner, job.lease_expires_at, job.attempts) == (
        "queued",
        None,
        None,
        1,
    )
    assert job.available_at <= now()
    [attempt] = await jobs.list_attempts(expired.id)
    assert (attempt.number, attempt.outcome, attempt.error_class) == (
        1,
        "lease_expired",
        "lease_expired",
    )
    assert attempt.ended_at is not None
    assert await jobs.reap_expired(enqueue) == []
    assert hooked == [[expired.id]]
    assert (await get(jobs, live)).status == "running"
    # The reaped job runs again as attempt 2.
    again = await claim_one(jobs, "w2")
    assert (again.id, again.attempts) == (expired.id, 2)


async def test_reap_fails_a_job_whose_every_attempt_lost_its_worker(
    jobs: SQLJobStore, org: Organization
) -> None:
    [job] = await create(jobs, org, 1, max_attempts=1)
    assert await jobs.start_job(job.id, "dead", 0.01) is not None
    await asyncio.sleep(0.05)
    hooked: list[list[str]] = []

    async def enqueue(conn: Any, requeued: list[Job]) -> None:
        hooked.append([j.id for j in requeued])

    [reaped] = await jobs.reap_expired(enqueue)

    assert reaped.status == "failed"
    assert hooked == []  # nothing to run again
    stored = await get(jobs, job)
    assert (stored.status, stored.error_class) == ("failed", "lease_expired")
    assert stored.error is not None
    assert "stopped" in stored.error
    assert stored.completed_at is not None
    assert await jobs.claim_jobs(PROVIDER, 5, "w2", 30) == []


async def test_reap_waits_out_the_grace_time(jobs: SQLJobStore, org: Organization) -> None:
    [job] = await create(jobs, org, 1)
    assert await jobs.start_job(job.id, "dead", 0.01) is not None
    await asyncio.sleep(0.05)

    assert await jobs.reap_expired(grace_s=60) == []
    assert (await get(jobs, job)).status == "running"
    assert [j.id for j in await jobs.reap_expired(grace_s=0)] == [job.id]


async def test_concurrent_reapers_never_take_the_same_job(
    jobs: SQLJobStore, org: Organization
) -> None:
    created = await create(jobs, org, 60)
    claimed = await jobs.claim_jobs(PROVIDER, 60, "dead", 0.01)
    assert len(claimed) == 60
    await asyncio.sleep(0.05)

    results = await asyncio.gather(*(jobs.reap_expired(limit=20) for _ in range(5)))

    reaped = [j.id for batch in results for j in batch]
    assert len(reaped) == len(set(reaped)) == 60
    assert set(reaped) == {j.id for j in created}
    for job in created[:5]:
        assert [a.outcome for a in await jobs.list_attempts(job.id)] == ["lease_expired"]


async def test_release_jobs_returns_the_owners_jobs_to_the_queue(
    jobs: SQLJobStore, org: Organization
) -> None:
    mine, theirs = await create(jobs, org, 2)
    assert await jobs.start_job(mine.id, "w1", 30) is not None
    assert await jobs.start_job(theirs.id, "w2", 30) is not None
    hooked: list[list[tuple[str, str]]] = []

    async def enqueue(conn: Any, queued: list[Job]) -> None:
        hooked.append([(j.id, j.status) for j in queued])

    released = await jobs.release_jobs("w1", [mine.id, theirs.id], enqueue)

    assert released == 1
    assert hooked == [[(mine.id, "queued")]]
    assert await jobs.release_jobs("w1", [mine.id], enqueue) == 0
    assert len(hooked) == 1
    job = await get(jobs, mine)
    # A shutdown is not the job's fault: the attempt stays in the history, and the
    # job's allowance grows by one so it is not used up.
    assert (job.status, job.lease_owner, job.lease_expires_at, job.attempts) == (
        "queued",
        None,
        None,
        1,
    )
    assert job.max_attempts == mine.max_attempts + 1
    [attempt] = await jobs.list_attempts(mine.id)
    assert (attempt.number, attempt.worker, attempt.outcome) == (1, "w1", "released")
    assert (await get(jobs, theirs)).lease_owner == "w2"
    assert await jobs.list_attempts(theirs.id) == []
    assert await jobs.release_jobs("w1", []) == 0
    [again] = await jobs.claim_jobs(PROVIDER, 5, "w3", 30)
    assert (again.id, again.attempts) == (mine.id, 2)


# --- outcomes -------------------------------------------------------------------------


async def test_completed_writes_the_result_and_tokens(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 1)
    job = await claim_one(jobs)

    applied = await jobs.finish_attempts(
        [
            outcome(
                job,
                "completed",
                title="Tagline",
                suggestion="Fresh every morning.",
                provider_latency_ms=120,
                prompt_tokens=11,
                completion_tokens=4,
            )
        ]
    )

    assert applied == [True]
    done = await get(jobs, job)
    assert (done.status, done.result_title, done.result_suggestion) == (
        "completed",
        "Tagline",
        "Fresh every morning.",
    )
    assert (done.prompt_tokens, done.completion_tokens) == (11, 4)
    assert (done.lease_owner, done.lease_expires_at) == (None, None)
    assert done.completed_at is not None
    [attempt] = await jobs.list_attempts(job.id)
    assert (attempt.number, attempt.worker, attempt.outcome) == (1, "w1", "completed")
    assert (attempt.provider_latency_ms, attempt.prompt_tokens, attempt.completion_tokens) == (
        120,
        11,
        4,
    )


async def test_the_result_is_written_once(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 1)
    stale = await claim_one(jobs, "w1", 0.01)
    await asyncio.sleep(0.05)
    await jobs.reap_expired()
    current = await claim_one(jobs, "w2")
    first = outcome(current, "completed", title="First", suggestion="one", prompt_tokens=3)
    assert await jobs.finish_attempts([first]) == [True]
    winner = await get(jobs, current)

    # A late result of the earlier attempt, and the same outcome delivered twice.
    late = outcome(stale, "completed", title="Late", suggestion="two", prompt_tokens=50)
    again = replace(first, title="Again", suggestion="three", ended_at=now())
    assert await jobs.finish_attempts([late, again]) == [False, False]

    assert await get(jobs, current) == winner
    assert (winner.result_title, winner.result_suggestion, winner.prompt_tokens) == (
        "First",
        "one",
        3,
    )
    attempts = await jobs.list_attempts(current.id)
    assert [(a.number, a.worker, a.outcome) for a in attempts] == [
        (1, "w1", "completed_dropped"),
        (2, "w2", "completed"),
    ]
    assert attempts[1].prompt_tokens == 3


async def test_a_late_result_still_wins_over_an_unfinished_job(
    jobs: SQLJobStore, org: Organization
) -> None:
    await create(jobs, org, 1)
    stale = await claim_one(jobs, "w1", 0.01)
    await asyncio.sleep(0.05)
    await jobs.reap_expired()

    # The dead worker's answer arrives while the job waits in the queue: the first result wins.
    assert await jobs.finish_attempts([outcome(stale, "completed", title="Late")]) == [True]

    job = await get(jobs, stale)
    assert (job.status, job.result_title) == ("completed", "Late")
    assert await jobs.claim_jobs(PROVIDER, 5, "w2", 30) == []
    [attempt] = await jobs.list_attempts(stale.id)
    assert attempt.outcome == "completed"


async def test_stale_retry_or_failure_changes_nothing(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 1)
    stale = await claim_one(jobs, "w1", 0.01)
    await asyncio.sleep(0.05)
    await jobs.reap_expired()
    current = await claim_one(jobs, "w2")

    applied = await jobs.finish_attempts(
        [
            outcome(stale, "retry", error="slow", available_at=now() + timedelta(minutes=5)),
            outcome(stale, "failed", error="gave up"),
            # The right owner with an old attempt number is stale too.
            replace(outcome(current, "failed", error="old"), attempt=1),
        ]
    )

    assert applied == [False, False, False]
    job = await get(jobs, current)
    assert (job.status, job.lease_owner, job.attempts, job.error) == ("running", "w2", 2, None)
    attempts = await jobs.list_attempts(current.id)
    assert [(a.number, a.outcome) for a in attempts] == [(1, "failed_dropped")]


async def test_retry_requeues_at_the_given_time(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 1)
    job = await claim_one(jobs)
    due = now() + timedelta(minutes=2)

    applied = await jobs.finish_attempts(
        [outcome(job, "retry", error="429", error_class="rate_limited", available_at=due)]
    )

    assert applied == [True]
    queued = await get(jobs, job)
    assert (queued.status, queued.lease_owner, queued.error_class) == (
        "queued",
        None,
        "rate_limited",
    )
    assert abs(queued.available_at - due) < timedelta(milliseconds=1)
    assert await jobs.claim_jobs(PROVIDER, 5, "w1", 30) == []
    [attempt] = await jobs.list_attempts(job.id)
    assert (attempt.outcome, attempt.error_class, attempt.error) == ("retry", "rate_limited", "429")


async def test_the_enqueue_hook_gets_the_retries_that_took_effect(
    jobs: SQLJobStore, org: Organization
) -> None:
    await create(jobs, org, 3)
    retried, done, stale = await jobs.claim_jobs(PROVIDER, 3, "w1", 30)
    hooked: list[list[tuple[str, str]]] = []

    async def enqueue(conn: Any, queued: list[Job]) -> None:
        hooked.append([(j.id, j.status) for j in queued])

    applied = await jobs.finish_attempts(
        [
            outcome(retried, "retry", available_at=now()),
            outcome(done, "completed", title="t"),
            replace(outcome(stale, "retry", available_at=now()), owner="someone-else"),
        ],
        enqueue,
    )

    assert applied == [True, True, False]
    assert hooked == [[(retried.id, "queued")]]


async def test_failed_ends_the_job(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 1)
    job = await claim_one(jobs)

    applied = await jobs.finish_attempts(
        [outcome(job, "failed", error="the provider refused", error_class="rejected")]
    )

    assert applied == [True]
    failed = await get(jobs, job)
    assert (failed.status, failed.error, failed.error_class) == (
        "failed",
        "the provider refused",
        "rejected",
    )
    assert failed.completed_at is not None
    assert failed.lease_owner is None
    # Later outcomes of any kind change nothing.
    assert await jobs.finish_attempts([outcome(job, "completed", title="t")]) == [False]
    assert (await get(jobs, job)).status == "failed"


async def test_outcomes_for_unknown_jobs_or_kinds(jobs: SQLJobStore, org: Organization) -> None:
    await create(jobs, org, 1)
    job = await claim_one(jobs)

    assert await jobs.finish_attempts([]) == []
    ghost = replace(outcome(job, "completed"), job_id=str(uuid.uuid4()))
    assert await jobs.finish_attempts([ghost]) == [False]
    with pytest.raises(ValueError, match="unknown outcome kind"):
        await jobs.finish_attempts([outcome(job, "exploded")])
    assert (await get(jobs, job)).status == "running"
    assert await jobs.list_attempts(job.id) == []


# --- retry_job, next_due ----------------------------------------------------------------


async def test_retry_job_requeues_a_failed_job_with_fresh_attempts(
    jobs: SQLJobStore, org: Organization
) -> None:
    [created] = await create(jobs, org, 1, max_attempts=2)
    for _ in range(2):
        job = await claim_one(jobs)
        kind = "retry" if job.attempts < 2 else "failed"
        await jobs.finish_attempts([outcome(job, kind, error="down", available_at=now())])
    assert (await get(jobs, created)).status == "failed"
    hooked: list[list[str]] = []

    async def enqueue(conn: Any, queued: list[Job]) -> None:
        hooked.append([j.id for j in queued])

    retried = await jobs.retry_job(org.id, created.id, 3, enqueue)

    assert (retried.id, retried.status, retried.attempts, retried.max_attempts) == (
        created.id,
        "queued",
        2,
        5,
    )
    assert (retried.error, retried.completed_at) == (None, None)
    assert hooked == [[created.id]]
    assert await get(jobs, created) == retried
    again = await claim_one(jobs)
    assert (again.id, again.attempts) == (created.id, 3)


async def test_retry_job_refuses_unfinished_and_completed_jobs(
    jobs: SQLJobStore, org: Organization
) -> None:
    queued, done = await create(jobs, org, 2)
    job = await jobs.start_job(done.id, "w1", 30)
    assert job is not None
    await jobs.finish_attempts([outcome(job, "completed", title="t")])

    with pytest.raises(JobNotRetryable) as queued_error:
        await jobs.retry_job(org.id, queued.id, 3)
    with pytest.raises(JobNotRetryable) as done_error:
        await jobs.retry_job(org.id, done.id, 3)

    assert queued_error.value.status == "in_progress"
    assert done_error.value.status == "completed"
    assert (await get(jobs, queued)).status == "queued"
    assert (await get(jobs, done)).status == "completed"


async def test_retry_job_of_unknown_or_foreign_job_is_not_found(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    [created] = await create(jobs, org, 1, max_attempts=1)
    job = await claim_one(jobs)
    await jobs.finish_attempts([outcome(job, "failed", error="no")])

    with pytest.raises(JobNotFound):
        await jobs.retry_job(other_org.id, created.id, 3)
    with pytest.raises(JobNotFound):
        await jobs.retry_job(org.id, str(uuid.uuid4()), 3)
    assert (await get(jobs, created)).status == "failed"


async def test_next_due_is_the_earliest_queued_job_of_the_provider(
    jobs: SQLJobStore, org: Organization
) -> None:
    assert await jobs.next_due(PROVIDER) is None
    await create(jobs, org, 2)
    [other] = await create(jobs, org, 1, provider="other")
    first = await claim_one(jobs)
    later = now() + timedelta(minutes=3)
    await jobs.finish_attempts([outcome(first, "retry", available_at=later)])

    running = await claim_one(jobs)  # the other queued job: nothing is due now
    due = await jobs.next_due(PROVIDER)

    assert due is not None
    assert due.tzinfo is not None
    assert abs(due - later) < timedelta(milliseconds=1)
    other_due = await jobs.next_due("other")
    assert other_due is not None
    assert abs(other_due - other.available_at) < timedelta(milliseconds=1)
    await jobs.finish_attempts([outcome(running, "completed", title="t")])
    assert await jobs.next_due("nobody") is None
    assert await jobs.active_providers() in (["fake", "other"], ["other", "fake"])


async def test_all_jobs_of_an_empty_store(jobs: SQLJobStore) -> None:
    assert await jobs.create_jobs([]) == []
    assert await jobs.claim_jobs(PROVIDER, 5, "w1", 30) == []
    assert await jobs.reap_expired() == []
    assert await jobs.active_providers() == []
    assert await jobs.cancel_jobs(None, []) == []
    assert await jobs.cancelled_among([]) == []


# --- cancel_jobs ------------------------------------------------------------------------


async def test_cancel_jobs_cancels_queued_and_running_jobs_once(
    jobs: SQLJobStore, org: Organization
) -> None:
    queued, running_job, done = await create(jobs, org, 3)
    running = await jobs.start_job(running_job.id, "w1", 30)
    finished = await jobs.start_job(done.id, "w1", 30)
    assert running is not None
    assert finished is not None
    await jobs.finish_attempts([outcome(finished, "completed", title="t")])
    before = now()

    cancelled = await jobs.cancel_jobs(org.id, [queued.id, running.id, done.id])

    assert sorted(j.id for j in cancelled) == sorted([queued.id, running.id])
    for job in cancelled:
        assert await get(jobs, job) == job
        assert (job.status, job.error, job.error_class) == (
            "cancelled",
            "cancelled by request",
            "cancelled",
        )
        assert (job.lease_owner, job.lease_expires_at) == (None, None)
        assert job.completed_at is not None
        assert before <= job.completed_at <= now()
    assert (await get(jobs, done)).status == "completed"
    ids = [queued.id, running.id, done.id]
    assert sorted(await jobs.cancelled_among(ids)) == sorted([queued.id, running.id])
    # Twice is harmless: nothing changes the second time.
    snapshot = [await get(jobs, job) for job in (queued, running, done)]
    assert await jobs.cancel_jobs(org.id, ids) == []
    assert [await get(jobs, job) for job in (queued, running, done)] == snapshot


async def test_cancel_jobs_is_scoped_by_organisation(
    jobs: SQLJobStore, org: Organization, other_org: Organization
) -> None:
    [job] = await create(jobs, org, 1)

    assert await jobs.cancel_jobs(other_org.id, [job.id]) == []
    assert await jobs.cancel_jobs(org.id, [str(uuid.uuid4())]) == []
    assert (await get(jobs, job)).status == "queued"
    [cancelled] = await jobs.cancel_jobs(None, [job.id])  # a worker-side call: any org
    assert cancelled.id == job.id


async def test_nothing_moves_a_cancelled_job(jobs: SQLJobStore, org: Organization) -> None:
    """No claim, start, renewal, release, reap or outcome touches a cancelled job."""
    queued, running_job = await create(jobs, org, 2)
    running = await jobs.start_job(running_job.id, "w1", 0.05)
    assert running is not None
    await jobs.cancel_jobs(org.id, [queued.id, running.id])
    await asyncio.sleep(0.1)  # the lease it had would have expired by now
    snapshot = [await get(jobs, queued), await get(jobs, running)]

    assert await jobs.claim_jobs(PROVIDER, 10, "w2", 30) == []
    assert await jobs.start_jobs([queued.id, running.id], "w2", 30) == []
    assert await jobs.renew_leases("w1", [running.id], 30) == 0
    assert await jobs.release_jobs("w1", [running.id]) == 0
    assert await jobs.reap_expired() == []
    late = [
        outcome(running, "completed", title="t", suggestion="late"),
        outcome(running, "retry", available_at=now()),
        outcome(running, "failed", error="boom"),
    ]
    assert await jobs.finish_attempts(late) == [False, False, False]
    assert [await get(jobs, queued), await get(jobs, running)] == snapshot
    assert (await get(jobs, running)).result_suggestion is None
    assert await jobs.next_due(PROVIDER) is None
    assert await jobs.active_providers() == []


async def test_a_cancelled_outcome_records_the_attempt_and_changes_no_job(
    jobs: SQLJobStore, org: Organization
) -> None:
    cancelled_job, other = await create(jobs, org, 2)
    running = await jobs.start_job(cancelled_job.id, "w1", 30)
    still_running = await jobs.start_job(other.id, "w1", 30)
    assert running is not None
    assert still_running is not None
    await jobs.cancel_jobs(org.id, [running.id])
    snapshot = await get(jobs, running)

    ended = outcome(running, "cancelled", error="cancelled by request", error_class="cancelled")
    stray = outcome(still_running, "cancelled", error="cancelled by request")
    assert await jobs.finish_attempts([ended, stray]) == [True, False]
    # A result arriving after the cancel is dropped and never replaces the record.
    assert await jobs.finish_attempts([outcome(running, "completed", title="t")]) == [False]

    assert await get(jobs, running) == snapshot
    [attempt] = await jobs.list_attempts(running.id)
    assert (attempt.number, attempt.worker, attempt.outcome, attempt.error) == (
        1,
        "w1",
        "cancelled",
        "cancelled by request",
    )
    assert (await get(jobs, still_running)).status == "running"
    [stray_record] = await jobs.list_attempts(still_running.id)
    assert stray_record.outcome == "cancelled_dropped"


async def test_retry_job_requeues_a_cancelled_job(jobs: SQLJobStore, org: Organization) -> None:
    """Writer's endpoints show a cancelled job as failed, so J4 may retry it."""
    [created] = await create(jobs, org, 1, max_attempts=3)
    await jobs.cancel_jobs(org.id, [created.id])

    retried = await jobs.retry_job(org.id, created.id, 3)

    assert (retried.status, retried.error, retried.completed_at) == ("queued", None, None)
    assert (await claim_one(jobs)).id == created.id


async def test_jobs_created_together_read_back_as_given(
    jobs: SQLJobStore, org: Organization
) -> None:
    """Several jobs in one call (one statement of arrays on PostgreSQL, not one of rows)
    store every field as given: nested and non-ASCII inputs, priorities, and ranks in order."""
    inputs = [
        [{"id": "topic", "value": ["bread"]}],
        [
            {"id": "topic", "value": ["crème brûlée", "日本"]},
            {"id": "n", "value": [{"a": [1, None]}]},
        ],
        [],
    ]
    news = [
        replace(new_job(org, priority=p, max_attempts=m), inputs=i)
        for i, p, m in zip(inputs, [0, 2, -1], [1, 3, 5], strict=True)
    ]
    created = await jobs.create_jobs(news)
    ranks = [job.fair_rank for job in created]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 3
    for new, made in zip(news, created, strict=True):
        stored = await jobs.get_job(org.id, new.id)
        assert stored == made
        assert (stored.inputs, stored.priority, stored.max_attempts) == (
            new.inputs,
            new.priority,
            new.max_attempts,
        )
        assert (stored.status, stored.attempts, stored.org_id, stored.agent_id) == (
            "queued",
            0,
            org.id,
            AGENT,
        )


async def test_one_batch_may_hold_the_same_attempt_twice(
    jobs: SQLJobStore, org: Organization
) -> None:
    """Two records of one attempt in one batch (a late result delivered twice) are written
    as if one after the other: the batch goes through and the last record stays."""
    await create(jobs, org, 1)
    stale = await claim_one(jobs, "w1", 0.01)
    await asyncio.sleep(0.05)
    await jobs.reap_expired()
    current = await claim_one(jobs, "w2")
    done = outcome(current, "completed", title="Done")
    first_late = outcome(stale, "failed", error="first", ended_at=now())
    second_late = replace(first_late, error="second", ended_at=now() + timedelta(seconds=1))
    assert await jobs.finish_attempts([first_late, done, second_late]) == [False, True, False]
    attempts = await jobs.list_attempts(current.id)
    assert [(a.number, a.outcome, a.error) for a in attempts] == [
        (1, "failed_dropped", "second"),
        (2, "completed", None),
    ]
    assert attempts[0].ended_at == second_late.ended_at


async def test_a_batchs_outcomes_store_their_times_as_single_writes_do(
    jobs: SQLJobStore, org: Organization, store: SQLStore
) -> None:
    """Outcome batches go to the driver as plain rows (SQLite) or arrays (PostgreSQL): the
    times they store read back as given, and on SQLite as the same text a single write
    stores (what every other query compares against)."""
    created = await create(jobs, org, 3)
    claimed = await jobs.claim_jobs(PROVIDER, 3, "w1", 30)
    assert len(claimed) == 3
    ended = [now() + timedelta(seconds=i, microseconds=i) for i in range(3)]
    done = [
        outcome(job, "completed", title=f"t{i}", ended_at=ended[i]) for i, job in enumerate(claimed)
    ]
    assert await jobs.finish_attempts(done) == [True, True, True]
    for job, end in zip(claimed, ended, strict=True):
        stored = await jobs.get_job(org.id, job.id)
        assert stored is not None
        assert (stored.status, stored.completed_at, stored.lease_owner) == ("completed", end, None)
        [attempt] = await jobs.list_attempts(job.id)
        assert (attempt.outcome, attempt.ended_at) == ("completed", end)
    if store.engine.dialect.name == "sqlite":
        async with store.engine.connect() as conn:
            texts = (
                await conn.execute(
                    select(func.cast(tables.jobs.c.completed_at, String())).where(
                        tables.jobs.c.id.in_([j.id for j in created])
                    )
                )
            ).scalars()
            assert sorted(texts) == sorted(_sqlite_text(end) for end in ended)
