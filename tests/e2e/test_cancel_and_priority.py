"""Cancelling jobs and job priorities, against real processes (Copydesk extensions).

Cancel: a job whose provider call hangs at the fake LLM server is cancelled through
``POST /v1/jobs/{id}/cancel``; the fake server sees the connection aborted, the job is
``cancelled`` on Copydesk's own view and ``failed`` on Writer's J2 (writer-sdk), and a
queued job cancelled never reaches the fake server. On the embedded deployment the API's
process aborts the call itself; on the scale-out one a separate ``copydesk worker``
process notices the cancelled row.

Priorities: a single job (priority 0) submitted after 300 queued jobs of priority -1 runs
before almost all of them. Measured from the jobs' ``completed_at`` in the database.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
import writerai

from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    KINDS,
    Deployment,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
    topic,
    wait_until,
)


def _view(deployment: Deployment, job_id: str, key: str | None = None) -> httpx.Response:
    return deployment.server.http("GET", f"/v1/jobs/{job_id}", api_key=key)


def _cancel(deployment: Deployment, job_id: str, key: str | None = None) -> httpx.Response:
    return deployment.server.http("POST", f"/v1/jobs/{job_id}/cancel", api_key=key)


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_aborts_the_provider_call_and_never_starts_a_queued_job(
    kind: str, deployments: Any, fake_llm: Any
) -> None:
    fake = fake_llm("--latency", "60")
    env = {
        **fake.provider_env(MAX_CONCURRENCY=1, TIMEOUT_S=120),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
        # No job picked ahead: the second job stays queued while the only slot is busy.
        "COPYDESK_PROVIDER_PREFETCH": "0",
    }
    deployment = deployments(kind, env=env, workers=1)
    sdk = deployment.server.client()
    hanging = sdk.applications.jobs.create(FAKE_AGENT_ID, inputs=topic("rye"))

    async def in_flight() -> bool:
        return bool(fake.stats(arrivals=False)["in_flight"] == 1)

    await wait_until(in_flight, 30, "the call to reach the fake", 0.1, lambda: deployment.output)
    queued = sdk.applications.jobs.create(FAKE_AGENT_ID, inputs=topic("spelt"))

    # A queued job: cancelled before a worker could take it (the only slot is busy).
    response = _cancel(deployment, queued.id)
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["attempts_made"]) == ("cancelled", 0)

    # The running job: its call is aborted at the fake server.
    started = time.monotonic()
    response = _cancel(deployment, hanging.id)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    async def aborted() -> bool:
        return bool(fake.stats(arrivals=False)["disconnects"] == 1)

    await wait_until(aborted, 10, "the aborted connection", 0.05, lambda: deployment.output)
    aborted_s = time.monotonic() - started

    async def attempt_recorded() -> bool:
        return bool(_view(deployment, hanging.id).json()["attempts"])

    await wait_until(attempt_recorded, 10, "the cancelled attempt", 0.1)
    view = _view(deployment, hanging.id).json()
    print(f"\n[{kind}] cancel: the fake server saw the call aborted {aborted_s:.2f}s after it")
    assert aborted_s < 2.0
    assert (view["status"], view["writer_status"], view["error"]) == (
        "cancelled",
        "failed",
        "cancelled by request",
    )
    assert (view["priority"], view["attempts_made"], view["data"]) == (0, 1, None)
    assert [a["outcome"] for a in view["attempts"]] == ["cancelled"]
    # Writer's J2 shows only Writer's statuses: a cancelled job is failed there.
    for job_id in (hanging.id, queued.id):
        writer_view = sdk.applications.jobs.retrieve(job_id)
        assert writer_view.status == "failed"
        assert writer_view.error == "cancelled by request"

    # Cancelling twice is harmless; so is cancelling a finished job (answered as it is).
    again = _cancel(deployment, hanging.id)
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    assert again.json()["completed_at"] == view["completed_at"]
    fake.control(latency_s=0.0)
    done = sdk.applications.jobs.create(FAKE_AGENT_ID, inputs=topic("oat"))

    async def completed() -> bool:
        return bool(_view(deployment, done.id).json()["status"] == "completed")

    await wait_until(completed, 30, "the next job to complete", 0.1, lambda: deployment.output)
    finished = _cancel(deployment, done.id)
    assert (finished.status_code, finished.json()["status"]) == (200, "completed")
    assert finished.json()["data"]["suggestion"].startswith("Echo:")

    # The queued job never reached the fake server: two calls in all (rye, oat).
    stats = fake.stats(arrivals=False)
    assert (stats["requests_total"], stats["disconnects"]) == (2, 1)
    assert _view(deployment, queued.id).json()["attempts"] == []

    # Another organisation's job does not exist for it.
    other_key = deployment.server.new_key("org-b")
    for call in (_cancel, _view):
        foreign = call(deployment, queued.id, other_key)
        assert foreign.status_code == 404
        assert foreign.headers["x-should-retry"] == "false"
        assert foreign.json()["errors"][0]["key"] == "fail.notFound.resource"
    assert _view(deployment, queued.id).json()["status"] == "cancelled"

    # Writer's J4 may retry a cancelled job (it shows as failed there): it runs again.
    sdk.applications.jobs.retry(queued.id)

    async def retried() -> bool:
        return bool(_view(deployment, queued.id).json()["status"] == "completed")

    await wait_until(retried, 30, "the retried job to complete", 0.1, lambda: deployment.output)
    assert fake.stats(arrivals=False)["requests_total"] == 3


BACKLOG, CONCURRENCY, LATENCY_S = 300, 2, 0.25


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    return datetime.fromisoformat(str(value))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_single_job_is_not_stuck_behind_a_low_priority_backlog(
    kind: str, deployments: Any, fake_llm: Any
) -> None:
    fake = fake_llm("--latency", str(LATENCY_S))
    env = {
        **fake.provider_env(MAX_CONCURRENCY=CONCURRENCY, TIMEOUT_S=30),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }
    deployment = deployments(kind, env=env, workers=1)

    # The backlog: J1 with the priority extension, through writer-sdk's extra_body.
    limit = asyncio.Semaphore(10)

    async def create(sdk: writerai.AsyncWriter, n: int) -> str:
        async with limit:
            job = await sdk.applications.jobs.create(
                FAKE_AGENT_ID,
                inputs=topic(f"backlog-{n}"),  # type: ignore[arg-type]
                extra_body={"priority": -1},
            )
            return job.id

    async with deployment.server.async_client() as sdk:
        backlog = set(await asyncio.gather(*(create(sdk, n) for n in range(BACKLOG))))
        with pytest.raises(writerai.BadRequestError) as too_high:
            await sdk.applications.jobs.create(
                FAKE_AGENT_ID,
                inputs=topic("x"),
                extra_body={"priority": 101},
            )
        single = await sdk.applications.jobs.create(FAKE_AGENT_ID, inputs=topic("urgent"))
    assert too_high.value.response.headers["x-should-retry"] == "false"

    async def single_done() -> bool:
        return bool(_view(deployment, single.id).json()["status"] == "completed")

    await wait_until(single_done, 60, "the single job to complete", 0.1, lambda: deployment.output)
    rows = await deployment.arows("SELECT id, priority, created_at, completed_at FROM jobs")
    by_id = {r[0]: r for r in rows}
    single_created = _datetime(by_id[single.id][2])
    single_completed = _datetime(by_id[single.id][3])
    done_times = [_datetime(by_id[i][3]) for i in backlog if by_id[i][3] is not None]
    before_submit = sum(1 for t in done_times if t <= single_created)
    while_waiting = sum(1 for t in done_times if single_created < t <= single_completed)
    left = BACKLOG - before_submit - while_waiting
    print(
        f"\n[{kind}] priority: the single job was submitted with {BACKLOG - before_submit} "
        f"of {BACKLOG} backlog jobs left; {while_waiting} of them completed before it "
        f"({(single_completed - single_created).total_seconds():.2f}s); {left} were left"
    )
    assert {by_id[i][1] for i in backlog} == {-1}
    assert by_id[single.id][1] == 0
    assert _view(deployment, single.id).json()["priority"] == 0
    assert left > BACKLOG // 2, "the backlog drained too early: the test would show nothing"
    # It waits for the calls already in flight (and a claim under way), not the backlog.
    assert while_waiting <= 3 * CONCURRENCY, while_waiting
