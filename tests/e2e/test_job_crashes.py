"""Crashes: a SIGKILLed worker (scale-out) or server (embedded) loses no accepted job.

2,000 jobs go to a real fake-LLM server (0.2 s per answer). Mid-run one process is killed
with SIGKILL, so no shutdown code runs: its leases are simply never renewed. Then every
job must end ``completed``, none may stay ``in_progress``, none may be missing, and each
result must be written once: exactly one ``completed`` attempt per job, whose end is the
job's ``completed_at``. Every attempt made (the killed ones too) has its row. A duplicate
run (a job re-picked while its first run was still alive) is recorded as
``completed_dropped`` and changes nothing. Each job's stored text is the fake's answer to
*its own* prompt.
"""

from __future__ import annotations

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


async def wait_for_kill_moment(
    deployment: Deployment, fake: Any, owner: str | None = None
) -> tuple[dict[str, int], int, int]:
    """Wait until a share KILL_AT[0] of the jobs is done while jobs run (under ``owner``,
    when given) and requests are at the provider; the status counts, the jobs running
    (under ``owner``) and the provider's requests in flight, all read at that moment."""
    seen: tuple[dict[str, int], int, int] = ({}, 0, 0)

    async def moment() -> bool:
        nonlocal seen
        counts = await status_counts(deployment)
        if counts.get("completed", 0) < KILL_AT[0] * JOBS:
            return False
        running = counts.get("running", 0)
        if owner is not None:
            (row,) = await deployment.arows(
                "SELECT count(*) FROM jobs WHERE status = 'running' AND lease_owner = ?", owner
            )
            running = int(row[0])
        in_flight = int(fake.stats(arrivals=False)["in_flight"])
        seen = (counts, running, in_flight)
        return running > 0 and in_flight > 0

    await wait_until(moment, 120, "the moment to kill", 0.05, lambda: deployment.output)
    return seen


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
        " SUM(CASE WHEN a.outcome = 'lease_expired' THEN 1 ELSE 0 END),"
        " COUNT(a.number)"
        " FROM jobs j LEFT JOIN job_attempts a ON a.job_seq = j.seq"
        " GROUP BY j.seq"
    )
    stored = {row[0] for row in rows}
    lost = len(ids - stored)
    stuck = sum(1 for row in rows if row[1] in ("queued", "running"))
    not_completed = [row for row in rows if row[1] != "completed"]
    duplicates = sum(int(row[6] or 0) for row in rows)
    wrong_text, not_once, not_from_winner, dropped_first, unrecorded = [], [], [], [], []
    for job_id, _status, inputs, suggestion, n, done, _dup, winner, early, _exp, rec in rows:
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
        if int(rec) != int(n):
            unrecorded.append((job_id, n, rec))
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
    assert not unrecorded, f"(job, attempts made, attempt rows) differ: {unrecorded[:5]}"
    return result


@pytest.mark.postgres
async def test_scaleout_survives_a_killed_worker(deployments: Any, fake_llm: Any) -> None:
    fake = fake_llm("--latency", "0.2")
    deployment = deployments("scaleout", env=fake_env(fake, 100), workers=2, start_workers=False)
    # The jobs are stored first, so the workers then run with a full backlog and the one
    # that dies holds its share of the 100 concurrent jobs.
    began = time.monotonic()
    inputs = [topic(f"job-{n:04d}") for n in range(JOBS)]
    submitted = await submit_jobs(
        deployment.url, deployment.key, FAKE_AGENT_ID, inputs, concurrency=20
    )
    submit_s = time.monotonic() - began
    deployment.start_workers()
    victim, survivor = deployment.workers
    victim_name = (victim.url or "").split()[0]
    run_began = time.monotonic()
    counts, running, at_provider = await wait_for_kill_moment(deployment, fake, victim_name)
    sigkill(victim)
    killed_at = time.monotonic() - run_began
    done_share = counts.get("completed", 0) / JOBS
    print(
        f"\n[scaleout] submitted {JOBS} jobs in {submit_s:.1f}s; SIGKILL worker {victim_name} "
        f"{killed_at:.1f}s into the run with {done_share:.0%} done, {running} job(s) running "
        f"under it and {at_provider} request(s) at the provider"
    )
    assert done_share <= KILL_AT[1], f"the kill came too late ({done_share:.0%} done)"
    await drain(deployment)
    wall = time.monotonic() - run_began
    assert survivor.returncode is None, f"the surviving worker exited:\n{deployment.output}"
    result = await audit(deployment, submitted)
    assert result["jobs_rerun_after_crash"] > 0
    stats = fake.stats(arrivals=False)
    print(
        f"[scaleout] {JOBS} jobs, 2 workers (1 killed): all done {wall:.1f}s after the workers "
        f"started; jobs lost {result['lost']}, stuck {result['stuck']}, duplicate "
        f"executions {result['duplicate_executions']}; provider requests "
        f"{stats['requests_total']}, peak in flight {stats['peak_in_flight']}"
    )


async def test_embedded_survives_a_killed_server(deployments: Any, fake_llm: Any) -> None:
    fake = fake_llm("--latency", "0.2")
    # The jobs are stored by a `serve --no-workers` on the data dir first (a loader), so the
    # server that is killed runs with a full backlog and 50 jobs in flight.
    deployment = deployments("embedded", env=fake_env(fake, 50), serve_workers=False)
    began = time.monotonic()
    inputs = [topic(f"job-{n:04d}") for n in range(JOBS)]
    submitted = await submit_jobs(
        deployment.url, deployment.key, FAKE_AGENT_ID, inputs, concurrency=20
    )
    submit_s = time.monotonic() - began
    deployment.server.stop()
    deployment.server.process.command.remove("--no-workers")
    deployment.server.start()  # the embedded default: API and workers in one process
    run_began = time.monotonic()
    counts, running, at_provider = await wait_for_kill_moment(deployment, fake)
    sigkill(deployment.server.process)
    killed_at = time.monotonic() - run_began
    done_share = counts.get("completed", 0) / JOBS
    print(
        f"\n[embedded] submitted {JOBS} jobs in {submit_s:.1f}s; SIGKILL serve "
        f"{killed_at:.1f}s into the run with {done_share:.0%} done, {running} job(s) running "
        f"and {at_provider} request(s) at the provider"
    )
    assert done_share <= KILL_AT[1], f"the kill came too late ({done_share:.0%} done)"
    after_kill = await status_counts(deployment)
    assert sum(after_kill.values()) == JOBS
    deployment.server.start()  # same data dir, same SQLite file, a new process
    restarted_at = time.monotonic() - run_began
    await drain(deployment)
    wall = time.monotonic() - run_began
    result = await audit(deployment, submitted)
    assert result["jobs_rerun_after_crash"] > 0
    stats = fake.stats(arrivals=False)
    print(
        f"[embedded] at the kill the file held {after_kill}; restarted {restarted_at:.1f}s "
        f"into the run; all done at {wall:.1f}s; jobs lost {result['lost']}, stuck "
        f"{result['stuck']}, duplicate executions {result['duplicate_executions']}; provider "
        f"requests {stats['requests_total']}"
    )
