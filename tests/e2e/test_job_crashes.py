"""Crashes: a SIGKILLed worker (scale-out) or server (embedded) loses no accepted job.

2,000 jobs go to a real fake-LLM server (0.2 s per answer). Mid-run one process is killed
with SIGKILL, so no shutdown code runs: its leases are simply never renewed. Then every
job must end ``completed``, none may stay ``in_progress``, none may be missing, and each
result must be written once: exactly one ``completed`` attempt per job, whose end is the
job's ``completed_at``; a duplicate run (a job re-picked while its first run was still
alive) is recorded as ``completed_dropped`` and changes nothing. Each job's stored text is
the fake's answer to *its own* prompt.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.e2e.jobs_fixtures import (
    FAKE_AGENT_ID,
    Deployment,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
    sigkill,
    submit_jobs,
    topic,
    wait_until,
)

JOBS = 2000
LEASE_S = 3
KILL_AT = (0.30, 0.60)  # kill once this share of the jobs is done (and not later)
DRAIN_TIMEOUT_S = 150


def fake_env(fake: Any, max_concurrency: int) -> dict[str, str]:
    return {
        **fake.provider_env(MAX_CONCURRENCY=max_concurrency, TIMEOUT_S=30),
        "COPYDESK_LEASE_S": str(LEASE_S),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }


async def status_counts(deployment: Deployment) -> dict[str, int]:
    rows = await deployment.arows("SELECT status, count(*) FROM jobs GROUP BY status")
    return {str(status): int(count) for status, count in rows}


async def wait_for_share(deployment: Deployment, share: float) -> dict[str, int]:
    counts: dict[str, int] = {}

    async def enough() -> bool:
        nonlocal counts
        counts = await status_counts(deployment)
        return counts.get("completed", 0) >= share * JOBS

    await wait_until(enough, 120, f"{share:.0%} of the jobs done", 0.1, lambda: deployment.output)
    return counts


async def drain(deployment: Deployment) -> float:
    async def all_done() -> bool:
        counts = await status_counts(deployment)
        return sum(counts.values()) >= JOBS and set(counts) <= {"completed", "failed"}

    return await wait_until(
        all_done, DRAIN_TIMEOUT_S, "every job to finish", 0.5, lambda: deployment.output
    )


async def audit(deployment: Deployment, submitted: list[dict[str, Any]]) -> dict[str, int]:
    """Check the database after the crash; the numbers the test prints."""
    ids = {job["id"] for job in submitted}
    assert len(ids) == JOBS, "every submission was answered 202 with a distinct id"
    rows = await deployment.arows(
        "SELECT j.id, j.status, j.inputs, j.result_suggestion, j.attempts,"
        " SUM(CASE WHEN a.outcome = 'completed' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN a.outcome = 'completed_dropped' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN a.outcome = 'completed' AND a.ended_at = j.completed_at"
        "     THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN a.outcome = 'completed_dropped' AND a.ended_at < j.completed_at"
        "     THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN a.outcome = 'lease_expired' THEN 1 ELSE 0 END)"
        " FROM jobs j LEFT JOIN job_attempts a ON a.job_seq = j.seq"
        " GROUP BY j.id, j.status, j.inputs, j.result_suggestion, j.attempts"
    )
    stored = {row[0] for row in rows}
    lost = len(ids - stored)
    stuck = sum(1 for row in rows if row[1] in ("queued", "running"))
    not_completed = [row for row in rows if row[1] != "completed"]
    duplicates = sum(int(row[6] or 0) for row in rows)
    wrong_text, not_once, not_from_winner, dropped_first = [], [], [], []
    for job_id, _status, inputs, suggestion, _n, done, _dup, winner, early, _exp in rows:
        value = json.loads(inputs) if isinstance(inputs, str) else inputs
        expected = f"Echo: Write one line about {value[0]['value'][0]}"
        if suggestion != expected:
            wrong_text.append((job_id, suggestion, expected))
        if int(done or 0) != 1:
            not_once.append((job_id, done))
        if int(winner or 0) != 1:
            not_from_winner.append(job_id)
        if int(early or 0):
            dropped_first.append(job_id)
    result = {
        "jobs": len(rows),
        "lost": lost,
        "stuck": stuck,
        "failed": sum(1 for row in rows if row[1] == "failed"),
        "duplicate_executions": duplicates,
        "attempts_total": sum(int(row[4]) for row in rows),
        "jobs_rerun_after_crash": sum(1 for row in rows if int(row[4]) > 1),
        "lease_expired_attempts": sum(int(row[9] or 0) for row in rows),
    }
    print(f"\n[{deployment.kind}] crash audit: {result}")
    assert lost == 0, f"{lost} accepted job(s) are missing from the database"
    assert len(rows) == JOBS, f"{len(rows)} job rows, expected {JOBS}"
    assert stuck == 0, f"{stuck} job(s) still in progress"
    assert not not_completed, f"jobs that did not complete: {not_completed[:5]}"
    assert not not_once, f"jobs without exactly one completed attempt: {not_once[:5]}"
    assert not not_from_winner, f"results not from the completed attempt: {not_from_winner[:5]}"
    assert not dropped_first, f"a dropped duplicate finished before the winner: {dropped_first}"
    assert not wrong_text, f"results that are not the job's own answer: {wrong_text[:3]}"
    return result


@pytest.mark.postgres
async def test_scaleout_survives_a_killed_worker(deployments: Any, fake_llm: Any) -> None:
    fake = fake_llm("--latency", "0.2")
    deployment = deployments("scaleout", env=fake_env(fake, 100), workers=2)
    victim, survivor = deployment.workers
    victim_name = (victim.url or "").split()[0]
    began = time.monotonic()
    inputs = [topic(f"job-{n:04d}") for n in range(JOBS)]
    submitting = asyncio.create_task(
        submit_jobs(deployment.url, deployment.key, FAKE_AGENT_ID, inputs, concurrency=50)
    )
    counts = await wait_for_share(deployment, KILL_AT[0])
    in_flight = await deployment.arows(
        "SELECT count(*) FROM jobs WHERE status = 'running' AND lease_owner = ?", victim_name
    )
    sigkill(victim)
    killed_at = time.monotonic() - began
    done_share = counts.get("completed", 0) / JOBS
    print(
        f"\n[scaleout] SIGKILL worker {victim_name} at {killed_at:.1f}s with "
        f"{done_share:.0%} done and {in_flight[0][0]} job(s) running under it"
    )
    assert done_share <= KILL_AT[1], f"the kill came too late ({done_share:.0%} done)"
    assert in_flight[0][0] > 0, "the killed worker held no job: the test proved nothing"
    submitted = await submitting
    submit_s = time.monotonic() - began
    await drain(deployment)
    wall = time.monotonic() - began
    assert survivor.returncode is None, f"the surviving worker exited:\n{deployment.output}"
    result = await audit(deployment, submitted)
    assert result["jobs_rerun_after_crash"] > 0
    stats = fake.stats(arrivals=False)
    print(
        f"[scaleout] {JOBS} jobs, 2 workers (1 killed): submitted in {submit_s:.1f}s, "
        f"all done in {wall:.1f}s wall; jobs lost {result['lost']}, stuck {result['stuck']}, "
        f"duplicate executions {result['duplicate_executions']}; provider requests "
        f"{stats['requests_total']}, peak in flight {stats['peak_in_flight']}"
    )


async def test_embedded_survives_a_killed_server(deployments: Any, fake_llm: Any) -> None:
    fake = fake_llm("--latency", "0.2")
    deployment = deployments("embedded", env=fake_env(fake, 50))
    began = time.monotonic()
    inputs = [topic(f"job-{n:04d}") for n in range(JOBS)]
    submitted = await submit_jobs(
        deployment.url, deployment.key, FAKE_AGENT_ID, inputs, concurrency=50
    )
    submit_s = time.monotonic() - began
    counts = await wait_for_share(deployment, KILL_AT[0])
    running = counts.get("running", 0)
    sigkill(deployment.server.process)
    killed_at = time.monotonic() - began
    done_share = counts.get("completed", 0) / JOBS
    print(
        f"\n[embedded] submitted {JOBS} in {submit_s:.1f}s; SIGKILL serve at {killed_at:.1f}s "
        f"with {done_share:.0%} done and {running} job(s) running"
    )
    assert done_share <= KILL_AT[1], f"the kill came too late ({done_share:.0%} done)"
    assert running > 0, "no job was running at the kill: the test proved nothing"
    after_kill = await status_counts(deployment)
    deployment.server.start()  # same data dir, same SQLite file, a new process
    restarted_at = time.monotonic() - began
    await drain(deployment)
    wall = time.monotonic() - began
    result = await audit(deployment, submitted)
    assert result["jobs_rerun_after_crash"] > 0
    stats = fake.stats(arrivals=False)
    print(
        f"[embedded] at the kill the file held {after_kill}; restarted at {restarted_at:.1f}s; "
        f"all done in {wall:.1f}s wall; jobs lost {result['lost']}, stuck {result['stuck']}, "
        f"duplicate executions {result['duplicate_executions']}; provider requests "
        f"{stats['requests_total']}"
    )
