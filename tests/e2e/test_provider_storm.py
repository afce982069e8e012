"""A provider storm: 30 % of the fake LLM's answers are 429 (Retry-After: 1), 500, or a stall
past the provider's 1 s timeout. 300 jobs must each end ``completed`` or, after
``max_attempts``, ``failed`` with an error that names its class; every attempt is accounted
for (the fake's request count is the sum of the jobs' attempts); and Retry-After is
honoured: no job's next attempt after a 429 starts sooner than 1 s after that 429 ended.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    KINDS,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
    submit_jobs,
    topic,
    wait_until,
)

JOBS = 300
MAX_ATTEMPTS = 3
RETRY_AFTER_S = 1.0
TRANSIENT = {"rate_limited", "unavailable", "timeout"}


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def fetch_jobs(url: str, key: str, ids: list[str]) -> list[dict[str, Any]]:
    """Every job by J2 (which carries the attempts), 20 requests at a time."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
        gate = asyncio.Semaphore(20)

        async def one(job_id: str) -> dict[str, Any]:
            async with gate:
                response = await c.get(f"/v1/applications/jobs/{job_id}")
                assert response.status_code == 200, response.text
                job: dict[str, Any] = response.json()
                return job

        return list(await asyncio.gather(*(one(i) for i in ids)))


@pytest.mark.parametrize("kind", KINDS)
async def test_jobs_weather_a_provider_storm(kind: str, deployments: Any, fake_llm: Any) -> None:
    fake = fake_llm(
        "--latency", "0.05",
        "--rate-429", "0.1", "--rate-500", "0.1", "--rate-stall", "0.1",
        "--retry-after", str(RETRY_AFTER_S), "--stall", "5", "--seed", "20241124",
    )  # fmt: skip
    env = {
        **fake.provider_env(MAX_CONCURRENCY=50, TIMEOUT_S=1),
        "COPYDESK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "COPYDESK_RETRY_BASE_DELAY_S": "0.2",
        "COPYDESK_RETRY_MAX_DELAY_S": "2",
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }
    deployment = deployments(kind, env=env, workers=2)
    began = time.monotonic()
    inputs = [topic(f"storm-{n:03d}") for n in range(JOBS)]
    submitted = await submit_jobs(deployment.url, deployment.key, FAKE_AGENT_ID, inputs, 20)
    ids = [job["id"] for job in submitted]

    async def finished() -> bool:
        rows = await deployment.arows(
            "SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed')"
        )
        return int(rows[0][0]) == JOBS

    await wait_until(finished, 180, "every job to finish", 0.5, lambda: deployment.output)
    wall = time.monotonic() - began
    jobs = await fetch_jobs(deployment.url, deployment.key, ids)
    stats = fake.stats()

    outcomes = Counter(job["status"] for job in jobs)
    attempts_made = Counter(job["attempts_made"] for job in jobs)
    classes: Counter[str] = Counter()
    gaps: list[float] = []
    for job, sent in zip(jobs, inputs, strict=True):
        attempts = job["attempts"]
        assert job["attempts_made"] == len(attempts), job
        assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1)), job
        assert 1 <= len(attempts) <= MAX_ATTEMPTS, job
        classes.update(a["error_class"] for a in attempts if a["error_class"])
        for a in attempts[:-1]:
            assert a["outcome"] == "retry", job
            assert a["error_class"] in TRANSIENT, job
            assert a["error"], job
        last = attempts[-1]
        if job["status"] == "completed":
            assert last["outcome"] == "completed", job
            assert job["error"] is None
            assert job["data"]["suggestion"] == f"Echo: Write one line about {sent[0]['value'][0]}"
        else:
            assert job["status"] == "failed", job
            assert len(attempts) == MAX_ATTEMPTS, job
            assert last["outcome"] == "failed", job
            assert last["error_class"] in TRANSIENT, job
            # The message says what happened, in words and by class.
            assert job["error"], job
            assert last["error_class"] in job["error"], job
            assert f"after {MAX_ATTEMPTS} attempt" in job["error"], job
            assert job["data"] is None
        # Retry-After: the next attempt after a 429 never started sooner than it allows.
        for earlier, later in itertools.pairwise(attempts):
            if earlier["error_class"] == "rate_limited":
                gaps.append((when(later["started_at"]) - when(earlier["ended_at"])).total_seconds())

    total_attempts = sum(job["attempts_made"] for job in jobs)
    status_counts = {int(k): v for k, v in stats["status_counts"].items()}
    print(
        f"\n[{kind}] storm: {JOBS} jobs in {wall:.1f}s -> {dict(outcomes)}; attempts made "
        f"{total_attempts} (per job: {dict(sorted(attempts_made.items()))}); failed attempts "
        f"by class {dict(classes)}; fake: {stats['requests_total']} requests, statuses "
        f"{status_counts}, stalls {stats['stalls']}; retries after a 429: {len(gaps)}, "
        f"min gap {min(gaps, default=float('nan')):.3f}s"
    )
    assert sum(outcomes.values()) == JOBS
    assert set(outcomes) <= {"completed", "failed"}
    assert outcomes["completed"] > JOBS * 0.8, outcomes
    # Every attempt reached the provider once, and each injected failure is one attempt.
    assert stats["requests_total"] == total_attempts
    assert len(stats["arrivals"]) == total_attempts
    assert classes["rate_limited"] == status_counts.get(429, 0)
    assert classes["unavailable"] == status_counts.get(500, 0)
    assert classes["timeout"] >= stats["stalls"] > 0
    assert gaps, "no 429 was followed by another attempt: Retry-After went untested"
    assert min(gaps) >= RETRY_AFTER_S, sorted(gaps)[:5]
    # The fake's own clock agrees: each attempt's [started_at, ended_at] holds an arrival of
    # a request at the fake (so the gaps above bound the real gaps between requests).
    arrivals = sorted(stats["arrivals"])
    empty = []
    for job in jobs:
        for a in job["attempts"]:
            start = when(a["started_at"]).timestamp() - 0.005
            end = when(a["ended_at"]).timestamp() + 0.005
            index = bisect.bisect_left(arrivals, start)
            if index == len(arrivals) or arrivals[index] > end:
                empty.append((job["id"], a))
    assert not empty, f"attempts with no request at the fake: {empty[:3]}"
