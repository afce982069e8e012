"""SIGTERM on a `copydesk worker`: it stops claiming, and within its grace time either
finishes its in-flight jobs or releases them to the queue, where another worker runs them.

Real processes on PostgreSQL (PgQueuer engine) and a real fake-LLM server.
"""

from __future__ import annotations

import signal
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
JOBS = 12


async def statuses(deployment: Deployment) -> dict[str, int]:
    rows = await deployment.arows("SELECT status, count(*) FROM jobs GROUP BY status")
    return {str(s): int(n) for s, n in rows}


async def outcomes(deployment: Deployment, worker: str) -> list[str]:
    rows = await deployment.arows(
        "SELECT outcome FROM job_attempts WHERE worker = $1 ORDER BY outcome", worker
    )
    return [str(r[0]) for r in rows]


def sigterm_and_wait(process: Any, timeout_s: float) -> float:
    running = process._process
    started = time.monotonic()
    running.send_signal(signal.SIGTERM)
    running.wait(timeout_s)
    return time.monotonic() - started


async def start_first_worker(
    deployments: Any, fake: Any, grace_s: float, prefetch: int = 0
) -> tuple[Any, Any]:
    env = {
        **fake.provider_env(MAX_CONCURRENCY=4, TIMEOUT_S=30),
        "COPYDESK_SHUTDOWN_GRACE_S": str(grace_s),
        "COPYDESK_LEASE_S": "30",
        "COPYDESK_PROVIDER_PREFETCH": str(prefetch),
    }
    deployment = deployments("scaleout", env=env, workers=2, start_workers=False)
    await submit_jobs(
        deployment.url, deployment.key, FAKE_AGENT_ID, [topic(f"t{n}") for n in range(JOBS)]
    )
    first, second = deployment.workers
    first.start()

    async def four_at_the_provider() -> bool:
        return int(fake.stats(arrivals=False)["in_flight"]) == 4

    await wait_until(four_at_the_provider, 30, "4 jobs in flight")
    return deployment, (first, second)


@pytest.mark.parametrize("prefetch", [0, 8], ids=["no-prefetch", "prefetch"])
async def test_sigterm_finishes_in_flight_jobs_within_the_grace_time(
    deployments: Any, fake_llm: Any, prefetch: int
) -> None:
    # With a prefetch, 8 more jobs are picked and started, waiting for a provider slot:
    # the stop gives them back untouched (queued, no attempt used or recorded).
    fake = fake_llm("--latency", "1.5")
    deployment, (first, _) = await start_first_worker(
        deployments, fake, grace_s=10, prefetch=prefetch
    )
    name = (first.url or "").split()[0]

    took = sigterm_and_wait(first, 20)

    assert first.returncode == 0, first.output
    assert took < 10, f"exited {took:.1f}s after SIGTERM"
    counts = await statuses(deployment)
    # The four in flight finished; nothing more was claimed after the signal.
    assert counts == {"completed": 4, "queued": JOBS - 4}, counts
    assert await outcomes(deployment, name) == ["completed"] * 4
    assert int(fake.stats(arrivals=False)["requests_total"]) == 4
    unused = await deployment.arows("SELECT count(*) FROM jobs WHERE attempts = 0")
    assert int(unused[0][0]) == JOBS - 4


async def test_sigterm_past_the_grace_time_releases_jobs_to_another_worker(
    deployments: Any, fake_llm: Any
) -> None:
    fake = fake_llm("--latency", "20")
    deployment, (first, second) = await start_first_worker(deployments, fake, grace_s=0.5)
    name = (first.url or "").split()[0]

    took = sigterm_and_wait(first, 20)

    assert first.returncode == 0, first.output
    assert took < 8, f"exited {took:.1f}s after SIGTERM"
    assert await statuses(deployment) == {"queued": JOBS}
    assert await outcomes(deployment, name) == ["released"] * 4
    # The provider saw the abandoned calls go away.
    await wait_until(
        lambda: _async(int(fake.stats(arrivals=False)["in_flight"]) == 0), 10, "calls closed"
    )

    fake.control(latency_s=0.05)
    second.start()

    async def all_done() -> bool:
        return (await statuses(deployment)).get("completed", 0) == JOBS

    await wait_until(all_done, 60, "every job completed by the second worker")
    # The released ones ran again as attempt 2, and the shutdown did not use up their
    # allowance (the default 5, plus the one given back).
    rows = await deployment.arows(
        "SELECT attempts, max_attempts, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1"
    )
    assert [tuple(int(v) for v in r) for r in rows] == [(1, 5, JOBS - 4), (2, 6, 4)]


async def _async(value: bool) -> bool:
    return value
