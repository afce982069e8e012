"""Fairness between organisations: a small batch is not stuck behind a big one.

Organisation A submits 5,000 jobs while the workers run (slower than A submits, so A's
backlog grows long); then organisation B submits 10. B's 10 must all complete before A's
last job does, and, better, while A finishes only a small part of the backlog it had
when B arrived: organisations are served round-robin (fair ranks), not first come, first
served. Measured from the jobs' ``completed_at`` in the database.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import write_agent
from tests.e2e.jobs_fixtures import (
    FAKE_AGENT,
    FAKE_AGENT_ID,
    KINDS,
    Deployment,
    deployments_fixture,  # noqa: F401 (registers the fixture)
    fake_llm_fixture,  # noqa: F401 (registers the fixture)
    submit_jobs,
    topic,
    wait_until,
)

A_JOBS, B_JOBS = 5000, 10
LATENCY_S, CONCURRENCY = 0.2, 5  # at most 25 jobs/s, well below A's submission rate


async def completions(deployment: Deployment, org_id: str) -> list[datetime]:
    rows = await deployment.arows(
        "SELECT completed_at FROM jobs WHERE org_id = ? AND status = 'completed'", org_id
    )
    return sorted(_datetime(r[0]) for r in rows)


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    return datetime.fromisoformat(str(value))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_small_batch_is_not_stuck_behind_a_big_one(
    kind: str, deployments: Any, fake_llm: Any, tmp_path: Path
) -> None:
    fake = fake_llm("--latency", str(LATENCY_S))
    env = {
        **fake.provider_env(MAX_CONCURRENCY=CONCURRENCY, TIMEOUT_S=30),
        "COPYDESK_POLL_INTERVAL_S": "0.2",
    }
    deployment = deployments(kind, env=env, workers=1)
    b_agent = write_agent(tmp_path / "org-b-agents", "fake.yaml", FAKE_AGENT)
    deployment.server.cli("agents", "deploy", b_agent, "--org", "org-b")
    b_key = deployment.server.new_key("org-b")
    org_ids = dict(await deployment.arows("SELECT name, id FROM organizations"))
    a_org, b_org = org_ids["default"], org_ids["org-b"]

    began = time.monotonic()
    await submit_jobs(
        deployment.url,
        deployment.key,
        FAKE_AGENT_ID,
        [topic(f"a-{n:04d}") for n in range(A_JOBS)],
        concurrency=10,
    )
    a_submit_s = time.monotonic() - began
    b_created = await submit_jobs(
        deployment.url, b_key, FAKE_AGENT_ID, [topic(f"b-{n}") for n in range(B_JOBS)], 10
    )
    b_ids = {job["id"] for job in b_created}

    async def b_done() -> bool:
        rows = await deployment.arows(
            "SELECT count(*) FROM jobs WHERE org_id = ? AND status = 'completed'", b_org
        )
        return int(rows[0][0]) == B_JOBS

    b_wait = await wait_until(b_done, 60, "B's jobs to complete", 0.2, lambda: deployment.output)
    a_done, b_times = await completions(deployment, a_org), await completions(deployment, b_org)
    (b_first_created,) = (
        await deployment.arows("SELECT min(created_at) FROM jobs WHERE org_id = ?", b_org)
    )[0]
    b_arrived = _datetime(b_first_created)
    b_last = max(b_times)
    a_before_b = sum(1 for t in a_done if t <= b_arrived)
    a_during_b = sum(1 for t in a_done if b_arrived < t <= b_last)
    backlog = A_JOBS - a_before_b
    a_left = A_JOBS - len(a_done)
    print(
        f"\n[{kind}] fairness: A submitted {A_JOBS} jobs in {a_submit_s:.1f}s "
        f"({A_JOBS / a_submit_s:.0f}/s); when B arrived A had {a_before_b} done and a backlog "
        f"of {backlog}; B's {B_JOBS} jobs all completed {b_wait:.1f}s later, while A "
        f"completed {a_during_b} ({a_during_b / backlog:.1%} of its backlog); B's last "
        f"completion came after A's #{a_before_b + a_during_b} of {A_JOBS}; A had {a_left} "
        "left then"
    )
    assert len(b_ids) == B_JOBS
    assert backlog >= 1000, "A's backlog was short: the test would show nothing"
    # B's last job completed before A's last one (A still has jobs to do)...
    assert a_left > 0
    # ...and long before A got through half of the backlog it had when B arrived.
    assert a_during_b < 0.5 * backlog
    # Round-robin: B waits for about one A job per B job (plus the jobs already running).
    assert a_during_b <= 2 * B_JOBS + 4 * CONCURRENCY, a_during_b

    # A is not starved either: its jobs go on completing after B's.
    async def a_moves_on() -> bool:
        return len(await completions(deployment, a_org)) > len(a_done) + 2 * CONCURRENCY

    await wait_until(a_moves_on, 30, "A's jobs to go on", 0.2, lambda: deployment.output)
