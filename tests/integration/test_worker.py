"""The worker end to end: ``App(settings).worker()`` with the embedded engine over real
SQLite and PostgreSQL, the deterministic provider and the fake LLM server as an ``openai``
provider. Jobs go in through the backlog service, as the API puts them in.

Each PostgreSQL test gets a fresh database (``App`` builds its own engine from the URL).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from copydesk.agents import parse_agent
from copydesk.app import App
from copydesk.config import Settings
from copydesk.engines.pgqueuer import AUTOVACUUM_OFF, PgQueuerQueue, _warm_dequeue, dsn_of
from copydesk.store import Attempt, Job, Organization
from copydesk.testing.fake_llm import FakeLLMConfig, FakeLLMServer
from copydesk.worker import Worker
from tests.conftest import PG_ADMIN_URL, PG_HOST, PG_PORT, require_service
from tests.integration.conftest import DatabaseKind

MakeApp = Callable[..., Awaitable[App]]
WAIT_S = 8.0


# --- fixtures -------------------------------------------------------------------------


async def _admin(statement: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


@pytest.fixture
async def database_url(db_kind: DatabaseKind, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database."""
    if db_kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'copydesk.db'}"
        return
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"copydesk_w_{uuid.uuid4().hex}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(FakeLLMConfig(retry_after_s=0.4)) as server:
        yield server


def fake_provider(
    fake: FakeLLMServer, *, max_concurrency: int, timeout_s: float = 20
) -> dict[str, Any]:
    """An ``openai`` provider's settings pointing at the fake LLM server."""
    return {
        "kind": "openai",
        "base_url": fake.base_url,
        "model": "fake-model",
        "max_concurrency": max_concurrency,
        "timeout_s": timeout_s,
    }


@pytest.fixture
async def make_app(database_url: str, fake: FakeLLMServer) -> AsyncIterator[MakeApp]:
    """Opened ``App``s on the test database (each one a process); closed at the end."""
    apps: list[App] = []

    async def make(**overrides: Any) -> App:
        values: dict[str, Any] = {
            "database_url": database_url,
            "engine": "embedded",
            "providers": {
                "local": {"kind": "deterministic", "max_concurrency": 8},
                "fake": fake_provider(fake, max_concurrency=8),
            },
            "lease_s": 1.0,
            "max_attempts": 3,
            "retry_base_delay_s": 0.05,
            "retry_max_delay_s": 1.0,
            "poll_interval_s": 0.1,
            "shutdown_grace_s": 5.0,
        }
        values.update(overrides)
        app = App(Settings(**values))
        await app.open()
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            await app.close()


# --- helpers --------------------------------------------------------------------------


async def deploy(app: App, provider: str) -> tuple[Organization, str]:
    org = await app.store.get_organization_by_name("acme")
    if org is None:
        org = await app.store.create_organization("acme")
    spec = parse_agent(
        {
            "id": f"tagline-{provider}",
            "name": "Tagline",
            "prompt": "Write a tagline about {{ topic }} for a small bakery.",
            "inputs": [{"name": "topic", "input_type": "text"}],
            "output": {"title": "Tagline"},
            "model": {"provider": provider},
            "parameters": {"max_tokens": 64},
        },
        "test",
    )
    agent = (await app.catalog.deploy(org.id, spec)).agent
    return org, agent.id


async def submit(app: App, org: Organization, agent_id: str, *topics: str) -> list[Job]:
    return [
        await app.backlog.submit(org.id, agent_id, [{"id": "topic", "value": [topic]}])
        for topic in topics
    ]


async def settled(
    app: App, jobs: Iterable[Job], statuses: tuple[str, ...] = ("completed", "failed")
) -> list[Job]:
    """The jobs, once every one has reached one of ``statuses``."""
    ids = [j.id for j in jobs]
    deadline = time.monotonic() + WAIT_S
    while True:
        current = [await app.jobs.get_job(None, job_id) for job_id in ids]
        if all(j is not None and j.status in statuses for j in current):
            return [j for j in current if j is not None]
        if time.monotonic() > deadline:
            states = [(j.id, j.status) if j else None for j in current]
            raise AssertionError(f"jobs did not reach {statuses} in {WAIT_S}s: {states}")
        await asyncio.sleep(0.05)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)


async def attempts(app: App, job: Job) -> list[Attempt]:
    return await app.jobs.list_attempts(job.id)


# --- completing -----------------------------------------------------------------------


async def test_jobs_complete_with_the_deterministic_provider(make_app: MakeApp) -> None:
    app = await make_app()
    org, agent_id = await deploy(app, "local")
    submitted = await submit(app, org, agent_id, "rye", "sourdough", "croissants", "bagels")
    worker = app.worker()

    async with running(worker):
        done = await settled(app, submitted)

    for job, topic in zip(done, ["rye", "sourdough", "croissants", "bagels"], strict=True):
        assert job.status == "completed"
        assert job.result_title == "Tagline"
        assert job.result_suggestion is not None
        assert job.result_suggestion.startswith("[")
        assert f"about {topic} for a small bakery." in job.result_suggestion
        assert job.prompt_tokens == len(
            f"Write a tagline about {topic} for a small bakery.".split()
        )
        assert job.completion_tokens == len(job.result_suggestion.split())
        assert (job.attempts, job.lease_owner, job.error) == (1, None, None)
        [attempt] = await attempts(app, job)
        assert (attempt.number, attempt.worker, attempt.outcome) == (1, worker.owner, "completed")
        assert attempt.ended_at is not None
        assert attempt.provider_latency_ms is not None


async def test_jobs_complete_through_an_openai_provider(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app()
    org, agent_id = await deploy(app, "fake")
    submitted = await submit(app, org, agent_id, *(f"loaf-{i}" for i in range(6)))

    async with running(app.worker()):
        done = await settled(app, submitted)

    assert fake.stats.requests_total == 6
    assert fake.stats.status_counts[200] == 6
    for i, job in enumerate(done):
        assert job.status == "completed"
        assert job.result_suggestion == f"Echo: Write a tagline about loaf-{i} for a small bakery."
        assert (job.prompt_tokens, job.completion_tokens) == (9, 10)
    assert sum(j.prompt_tokens for j in done) == fake.stats.prompt_tokens


# --- failures -------------------------------------------------------------------------


async def test_transient_failures_are_retried_honouring_retry_after(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app()
    org, agent_id = await deploy(app, "fake")
    fake.configure(script=["429", "500", "ok"])
    [job] = await submit(app, org, agent_id, "rye")

    async with running(app.worker()):
        [done] = await settled(app, [job])

    assert (done.status, done.attempts) == ("completed", 3)
    assert done.result_suggestion is not None
    assert done.result_suggestion.startswith("Echo:")
    tries = await attempts(app, done)
    assert [(a.number, a.outcome, a.error_class) for a in tries] == [
        (1, "retry", "rate_limited"),
        (2, "retry", "unavailable"),
        (3, "completed", None),
    ]
    assert tries[0].error is not None
    assert "injected 429" in tries[0].error
    arrivals = list(fake.stats.arrivals)
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.4  # the 429's Retry-After: 0.4
    assert arrivals[2] - arrivals[1] >= 0.1  # the backoff before attempt 3: 0.05 * 2


async def test_a_rejected_request_fails_at_once(make_app: MakeApp, fake: FakeLLMServer) -> None:
    app = await make_app()
    org, agent_id = await deploy(app, "fake")
    fake.configure(reject_400_if_contains="marzipan")
    [job] = await submit(app, org, agent_id, "marzipan")

    async with running(app.worker()):
        [done] = await settled(app, [job])

    assert (done.status, done.attempts, done.error_class) == ("failed", 1, "rejected")
    assert done.error is not None
    assert "the model provider rejected the request" in done.error
    assert "the prompt contains 'marzipan', which is refused" in done.error
    assert done.completed_at is not None
    assert [a.outcome for a in await attempts(app, done)] == ["failed"]
    assert fake.stats.requests_total == 1


async def test_giving_up_after_the_last_attempt_and_retrying_with_fresh_attempts(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app(max_attempts=2)
    org, agent_id = await deploy(app, "fake")
    fake.configure(script=["500", "500"])
    [job] = await submit(app, org, agent_id, "rye")

    async with running(app.worker()):
        [failed] = await settled(app, [job])

        assert (failed.status, failed.attempts, failed.error_class) == ("failed", 2, "unavailable")
        assert failed.error is not None
        assert failed.error.startswith("gave up after 2 attempt(s)")
        assert "injected 500 from the fake LLM server" in failed.error
        assert [a.outcome for a in await attempts(app, failed)] == ["retry", "failed"]
        assert fake.stats.requests_total == 2

        # Retried by the API: the same job gets two more attempts, and needs both.
        fake.configure(script=["500", "ok"])
        retried = await app.backlog.retry(org.id, job.id)
        assert (retried.status, retried.max_attempts) == ("queued", 4)
        [done] = await settled(app, [job], ("completed",))

    assert (done.id, done.attempts) == (job.id, 4)
    assert [a.outcome for a in await attempts(app, done)] == [
        "retry",
        "failed",
        "retry",
        "completed",
    ]


# --- stopping -------------------------------------------------------------------------


async def test_stop_lets_in_flight_jobs_finish_within_the_grace_time(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app(shutdown_grace_s=5.0)
    org, agent_id = await deploy(app, "fake")
    fake.configure(latency_s=0.5)
    submitted = await submit(app, org, agent_id, "rye", "spelt", "oat")
    worker = app.worker()
    task = asyncio.create_task(worker.run())
    await until(lambda: fake.stats.in_flight == 3, "three requests in flight")

    started = time.monotonic()
    worker.stop()
    await asyncio.sleep(0.05)  # a claim already under way when stop came may finish
    [late] = await submit(app, org, agent_id, "barley")  # after stop: never claimed
    await asyncio.wait_for(task, 5.0)

    assert time.monotonic() - started < 2.0  # finished, not timed out
    for job in [await app.jobs.get_job(None, j.id) for j in submitted]:
        assert job is not None
        assert (job.status, job.attempts) == ("completed", 1)
    still = await app.jobs.get_job(None, late.id)
    assert still is not None
    assert (still.status, still.attempts) == ("queued", 0)
    assert fake.stats.requests_total == 3


async def test_stop_without_grace_releases_in_flight_jobs_to_another_worker(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app(shutdown_grace_s=0.0)
    org, agent_id = await deploy(app, "fake")
    fake.configure(latency_s=5.0)
    submitted = await submit(app, org, agent_id, "rye", "spelt")
    first = app.worker()
    task = asyncio.create_task(first.run())
    await until(lambda: fake.stats.in_flight == 2, "two requests in flight")

    started = time.monotonic()
    first.stop()
    await asyncio.wait_for(task, 5.0)

    assert time.monotonic() - started < 3.0
    for job in [await app.jobs.get_job(None, j.id) for j in submitted]:
        assert job is not None
        assert (job.status, job.lease_owner, job.attempts) == ("queued", None, 1)
        [attempt] = await attempts(app, job)
        assert (attempt.number, attempt.worker, attempt.outcome) == (1, first.owner, "released")

    # Another worker process picks them up.
    fake.configure(latency_s=0.0)
    other = await make_app()
    second = other.worker()
    async with running(second):
        done = await settled(other, submitted)

    for job in done:
        assert (job.status, job.attempts) == ("completed", 2)
        assert [(a.worker, a.outcome) for a in await attempts(other, job)] == [
            (first.owner, "released"),
            (second.owner, "completed"),
        ]


async def test_jobs_picked_ahead_wait_for_a_slot_and_a_stop_gives_them_back_unused(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app(
        providers={"fake": fake_provider(fake, max_concurrency=2)},
        provider_prefetch=2,
        shutdown_grace_s=0.0,
    )
    org, agent_id = await deploy(app, "fake")
    fake.configure(latency_s=5.0)
    submitted = await submit(app, org, agent_id, *(f"loaf-{i}" for i in range(6)))
    worker = app.worker()
    task = asyncio.create_task(worker.run())

    async def statuses() -> list[str]:
        return [
            job.status
            for job in [await app.jobs.get_job(None, j.id) for j in submitted]
            if job is not None
        ]

    await until(lambda: fake.stats.in_flight == 2, "two requests in flight")
    deadline = time.monotonic() + WAIT_S
    while (await statuses()).count("running") < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # time for a wrong third call to show
    # max_concurrency 2 + prefetch 2: four jobs taken, two calls, two waiting for a slot.
    assert sorted(await statuses()) == ["queued"] * 2 + ["running"] * 4
    assert (fake.stats.in_flight, fake.stats.peak_in_flight) == (2, 2)

    worker.stop()
    await asyncio.wait_for(task, 5.0)
    jobs = [await app.jobs.get_job(None, j.id) for j in submitted]
    assert {job.status for job in jobs if job is not None} == {"queued"}
    history = sorted(
        [
            (job.attempts, [a.outcome for a in await attempts(app, job)])
            for job in jobs
            if job is not None
        ],
        reverse=True,
    )
    # The two calls were released (an attempt each); the two picked ahead went back
    # untouched, like the two never picked.
    assert history == [(1, ["released"])] * 2 + [(0, [])] * 4
    assert fake.stats.requests_total == 2


@pytest.mark.parametrize("db_kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_each_pgqueuer_worker_picks_at_most_its_limit_plus_prefetch(
    make_app: MakeApp, fake: FakeLLMServer, db_kind: str
) -> None:
    # PgQueuer's budget per worker (max_concurrent_tasks), not its concurrency_limit,
    # bounds the picks; the provider slots (advisory locks) bound the calls.
    settings: dict[str, Any] = {
        "engine": "pgqueuer",
        "providers": {"fake": fake_provider(fake, max_concurrency=2)},
        "provider_prefetch": 1,
        "shutdown_grace_s": 0.0,
    }
    app = await make_app(**settings)
    org, agent_id = await deploy(app, "fake")
    fake.configure(latency_s=5.0)
    submitted = await submit(app, org, agent_id, *(f"loaf-{i}" for i in range(8)))
    workers = [app.worker(), (await make_app(**settings)).worker()]
    tasks = [asyncio.create_task(w.run()) for w in workers]

    async def running_per_worker() -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for job_id in (j.id for j in submitted):
            job = await app.jobs.get_job(None, job_id)
            if job is not None and job.status == "running":
                counts[job.lease_owner] = counts.get(job.lease_owner, 0) + 1
        return counts

    deadline = time.monotonic() + WAIT_S
    while sum((await running_per_worker()).values()) < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # time for a wrong extra pick or call to show
    # Two workers x (max_concurrency 2 + prefetch 1) picked; two calls across both.
    assert sorted((await running_per_worker()).values()) == [3, 3]
    assert (fake.stats.in_flight, fake.stats.peak_in_flight) == (2, 2)
    for worker in workers:
        worker.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 10.0)


@pytest.mark.parametrize("db_kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_pgqueuer_warm_up_dequeue_takes_nothing(make_app: MakeApp, db_kind: str) -> None:
    # A worker runs each connection's dequeue once before it says it takes work (the
    # first one is ~30 ms slower); it asks for an entrypoint nobody enqueues.
    app = await make_app(engine="pgqueuer")
    org, agent_id = await deploy(app, "local")
    submitted = await submit(app, org, agent_id, "rye", "spelt")
    conn = await asyncpg.connect(dsn_of(app.store.url))
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        assert await _warm_dequeue(qm, budget=4, lease_s=30.0) == []
        rows = await conn.fetch("SELECT entrypoint, status::text FROM pgqueuer")
        assert [(r[0], r[1]) for r in rows] == [("copydesk.local", "queued")] * 2
    finally:
        await conn.close()
    async with running(app.worker()):
        done = await settled(app, submitted)
    assert [j.status for j in done] == ["completed"] * 2


@pytest.mark.parametrize("db_kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_pgqueuer_dispatch_connections_plan_every_dequeue(
    make_app: MakeApp, db_kind: str
) -> None:
    # A dequeue plan cached while the statistics said the queue was empty read and sorted
    # every queued entry until the next ANALYZE (10x slower): each one is planned afresh.
    app = await make_app(engine="pgqueuer")
    assert isinstance(app.queue, PgQueuerQueue)
    conn = await app.queue._connect()
    try:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        qm = QueueManager(Queries(AsyncpgDriver(conn)))
        for _ in range(8):  # PostgreSQL considers a generic plan after 5 executions
            assert await _warm_dequeue(qm, budget=4, lease_s=30.0) == []
        plans = await conn.fetch(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%next_queued AS%' "
            "AND statement NOT LIKE '%pg_prepared_statements%'"
        )
        assert [(r[0], r[1]) for r in plans] == [(0, 8)]
    finally:
        await conn.close()


@pytest.mark.parametrize("db_kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_pgqueuer_engine_warns_when_autovacuum_is_off(
    make_app: MakeApp, db_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="copydesk.engines.pgqueuer"):
        app = await make_app(engine="pgqueuer")
    conn = await asyncpg.connect(dsn_of(app.store.url))
    try:
        off = await conn.fetchval("SHOW autovacuum") == "off"
    finally:
        await conn.close()
    warned = [r.getMessage() for r in caplog.records if "autovacuum is off" in r.getMessage()]
    assert warned == ([AUTOVACUUM_OFF] if off else [])


async def test_a_dead_workers_job_is_reaped_and_run(make_app: MakeApp) -> None:
    app = await make_app()
    org, agent_id = await deploy(app, "local")
    [job] = await submit(app, org, agent_id, "rye")
    # A worker claims the job and dies: its lease runs out.
    [claimed] = await app.jobs.claim_jobs("local", 1, "dead-worker", 0.05)
    assert claimed.id == job.id
    await asyncio.sleep(0.1)
    worker = app.worker()

    async with running(worker):
        [done] = await settled(app, [job])

    assert (done.status, done.attempts) == ("completed", 2)
    assert [(a.number, a.outcome) for a in await attempts(app, done)] == [
        (1, "lease_expired"),
        (2, "completed"),
    ]


async def test_a_live_lease_is_renewed_and_never_reaped(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    # The call takes 2.5 s, longer than the 1 s lease: renewal must keep the job.
    app = await make_app()
    org, agent_id = await deploy(app, "fake")
    fake.configure(latency_s=2.5)
    [job] = await submit(app, org, agent_id, "rye")
    other = await make_app()  # a second process whose reaper is watching

    async with running(app.worker()), running(other.worker()):
        [done] = await settled(app, [job])

    assert (done.status, done.attempts) == ("completed", 1)
    assert [a.outcome for a in await attempts(app, done)] == ["completed"]
    assert fake.stats.requests_total == 1


# --- cancelling -----------------------------------------------------------------------


async def _cancelled_attempt(app: App, job: Job) -> list[Attempt]:
    deadline = time.monotonic() + WAIT_S
    while not (recorded := await attempts(app, job)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return recorded


async def test_cancelling_a_running_job_in_the_same_process_aborts_its_call(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    app = await make_app()
    org, agent_id = await deploy(app, "fake")
    fake.configure(latency_s=30.0)
    [job] = await submit(app, org, agent_id, "rye")

    async with running(app.worker()) as task:
        await until(lambda: fake.stats.in_flight == 1, "the call to be in flight")
        started = time.monotonic()
        detail = await app.backlog.cancel(org.id, job.id)
        await until(lambda: fake.stats.disconnects == 1, "the call to be aborted")
        aborted_s = time.monotonic() - started
        [attempt] = await _cancelled_attempt(app, job)
        assert not task.done()  # the worker goes on

    assert aborted_s < 0.5  # in-process: no polling
    assert detail.job.status == "cancelled"
    stored = await app.jobs.get_job(org.id, job.id)
    assert stored is not None
    assert (stored.status, stored.result_suggestion, stored.lease_owner) == (
        "cancelled",
        None,
        None,
    )
    assert (attempt.number, attempt.outcome, attempt.error_class) == (1, "cancelled", "cancelled")
    assert fake.stats.requests_total == 1


async def test_a_job_cancelled_by_another_process_is_aborted_by_its_worker(
    make_app: MakeApp, fake: FakeLLMServer
) -> None:
    """The API in one process, the worker in another: the worker's watcher notices."""
    api = await make_app()
    org, agent_id = await deploy(api, "fake")
    fake.configure(latency_s=30.0)
    job, queued = await submit(api, org, agent_id, "rye", "spelt")
    worker_app = await make_app(
        providers={"fake": fake_provider(fake, max_concurrency=1, timeout_s=60)},
        provider_prefetch=0,  # the second job stays queued while the only slot is busy
    )
    worker = worker_app.worker()

    async with running(worker):
        await until(lambda: fake.stats.in_flight == 1, "the first call to be in flight")
        await api.backlog.cancel(org.id, queued.id)  # queued: it must never start
        started = time.monotonic()
        await api.backlog.cancel(org.id, job.id)
        await until(lambda: fake.stats.disconnects == 1, "the call to be aborted")
        aborted_s = time.monotonic() - started
        [attempt] = await _cancelled_attempt(api, job)
        again = await api.backlog.cancel(org.id, job.id)  # twice: harmless
        await asyncio.sleep(0.3)  # the freed slot would take the queued job now

    assert aborted_s < 2.0  # the watcher polls every 0.5 s
    assert (attempt.worker, attempt.outcome) == (worker.owner, "cancelled")
    assert again.job.status == "cancelled"
    never = await api.jobs.get_job(org.id, queued.id)
    assert never is not None
    assert (never.status, never.attempts) == ("cancelled", 0)
    assert fake.stats.requests_total == 1
