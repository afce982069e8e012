"""Flow control across worker processes (scale-out: PostgreSQL, PgQueuer, two workers).

The limits are a provider's, not a process's: two ``copydesk worker`` processes together
must keep to the provider's ``max_concurrency`` (bounded by PgQueuer in SQL) and to its
``requests_per_minute`` (a sliding window in PostgreSQL). The fake LLM server measures
both from its side: the most requests it held at once, and the most that arrived within
any 60 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    Deployment,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
    submit_jobs,
    topic,
    wait_until,
)

pytestmark = pytest.mark.postgres


async def wait_all_completed(deployment: Deployment, jobs: int, timeout_s: float) -> float:
    async def done() -> bool:
        rows = await deployment.arows("SELECT status, count(*) FROM jobs GROUP BY status")
        return dict(rows).get("completed", 0) == jobs

    return await wait_until(
        done, timeout_s, f"{jobs} jobs completed", 0.5, lambda: deployment.output
    )


async def test_max_concurrency_holds_across_two_workers(deployments: Any, fake_llm: Any) -> None:
    limit, jobs = 20, 200
    fake = fake_llm("--latency", "0.3")
    env = {
        **fake.provider_env(MAX_CONCURRENCY=limit, TIMEOUT_S=30),
        "COPYDESK_PROVIDER_PREFETCH": "8",
    }
    # Each worker picks up to limit + prefetch (28 here, 56 for the two): the provider
    # slots (advisory locks shared by the two processes) are what must hold the calls in
    # flight to it.
    deployment = deployments("scaleout", env=env, workers=2, start_workers=False)
    inputs = [topic(f"conc-{n:03d}") for n in range(jobs)]
    await submit_jobs(deployment.url, deployment.key, FAKE_AGENT_ID, inputs, 20)
    deployment.start_workers()  # both workers start on a full backlog of 200 jobs
    began = time.monotonic()
    await wait_all_completed(deployment, jobs, 120)
    wall = time.monotonic() - began
    stats = fake.stats()
    arrivals = sorted(stats["arrivals"])
    # The workers start one after the other (the first may run before ``began``): the
    # provider's own clock says how long the calls took.
    busy = arrivals[-1] - arrivals[0] + 0.3
    per_worker = await deployment.arows(
        "SELECT a.worker, count(*) FROM job_attempts a WHERE a.outcome = 'completed'"
        " GROUP BY a.worker"
    )
    print(
        f"\n[flow] max_concurrency={limit}, 2 workers, {jobs} jobs at 0.3 s: peak in flight "
        f"{stats['peak_in_flight']}, requests {stats['requests_total']}, {wall:.1f}s, "
        f"provider busy {busy:.1f}s (at least {jobs * 0.3 / limit:.1f}s at the limit); "
        f"completed per worker "
        f"{sorted(n for _, n in per_worker)}"
    )
    assert stats["requests_total"] == jobs
    assert stats["peak_in_flight"] <= limit
    assert stats["peak_in_flight"] >= 15, "the limit was never approached: the test shows nothing"
    assert len(per_worker) == 2, "both workers must have run jobs"
    assert min(n for _, n in per_worker) >= 10, "one worker did (nearly) all the work"
    assert busy >= jobs * 0.3 / limit * 0.95


async def test_requests_per_minute_holds_across_two_workers(
    deployments: Any, fake_llm: Any
) -> None:
    rpm, jobs = 100, 130
    fake = fake_llm()  # answers at once: the limiter alone spaces the requests
    env = fake.provider_env(MAX_CONCURRENCY=100, REQUESTS_PER_MINUTE=rpm, TIMEOUT_S=30)
    deployment = deployments("scaleout", env=env, workers=2)
    # Both workers are up before the jobs come, so both take jobs from the start and
    # both hold some of those that must wait for the window.
    began = time.monotonic()
    inputs = [topic(f"rpm-{n:03d}") for n in range(jobs)]
    await submit_jobs(deployment.url, deployment.key, FAKE_AGENT_ID, inputs, 20)
    await wait_all_completed(deployment, jobs, 150)
    wall = time.monotonic() - began
    stats = fake.stats(window_s=60)
    arrivals = sorted(stats["arrivals"])
    per_worker = await deployment.arows(
        "SELECT a.worker, count(*) FROM job_attempts a WHERE a.outcome = 'completed'"
        " GROUP BY a.worker"
    )
    first_minute = sum(1 for t in arrivals if t - arrivals[0] < 60)
    print(
        f"\n[flow] requests_per_minute={rpm}, 2 workers, {jobs} jobs: max in any 60 s window "
        f"{stats['max_in_window']}, {first_minute} in the first minute, requests "
        f"{stats['requests_total']}, request {rpm + 1} came "
        f"{arrivals[rpm] - arrivals[0]:.2f}s after the first; all done in {wall:.1f}s; "
        f"completed per worker {sorted(n for _, n in per_worker)}"
    )
    assert stats["requests_total"] == jobs > rpm  # the limiter really held some back
    assert stats["max_in_window"] <= rpm
    assert first_minute == rpm, "the first minute's allowance was not used in full"
    assert arrivals[rpm] - arrivals[0] >= 60 - 0.5
    assert len(per_worker) == 2, "both workers must have run jobs"
    assert min(n for _, n in per_worker) >= 10, "one worker did (nearly) all the work"
