"""The floor of Copydesk's record keeping: jobs/s when a worker does nothing but the
store calls every job needs (claim it running under a lease, write its outcome and its
attempt record), in batches of ``--batch``, with no HTTP, no prompt, no provider and no
engine around them. Whatever the rest of Copydesk does, one worker cannot go faster than
this on the same database, so it bounds the engine-overhead figure from above.

    python -m bench.record_floor --jobs 20000 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.engines.common import agent_from, machine_busy_s
from bench.engines.pgqueuer_records_runner import ATTEMPTS, COMPLETE
from bench.procs import ROOT, fresh_database
from copydesk.migrations import upgrade_to_head
from copydesk.store import NewJob, Outcome
from copydesk.stores.sql import SQLJobStore, SQLStore, utcnow


async def _stored(url: str, count: int) -> tuple[SQLJobStore, SQLStore]:
    """A migrated database at ``url`` holding ``count`` queued jobs of provider ``echo``."""
    store = SQLStore(url)
    await store.open()
    await upgrade_to_head(store.engine)
    jobs = SQLJobStore(store)
    org = await store.create_organization("bench")
    news = [
        NewJob(
            id=str(uuid.uuid4()),
            org_id=org.id,
            agent_id="agent",
            agent_version=1,
            provider="echo",
            inputs=[{"id": "text", "value": ["x"]}],
            max_attempts=5,
        )
        for _ in range(count)
    ]
    for start in range(0, count, 1000):
        await jobs.create_jobs(news[start : start + 1000])
    return jobs, store


async def floor(url: str, count: int, batch: int) -> dict[str, Any]:
    jobs, store = await _stored(url, count)
    busy, started = machine_busy_s(), time.perf_counter()
    done = 0
    while done < count:
        claimed = await jobs.claim_jobs("echo", batch, "floor", 30.0)
        if not claimed:
            break
        now = utcnow()
        outcomes = [
            Outcome(
                job_id=j.id,
                kind="completed",
                owner="floor",
                attempt=j.attempts,
                started_at=now,
                ended_at=now,
                title="t",
                suggestion="s",
                prompt_tokens=1,
                completion_tokens=1,
            )
            for j in claimed
        ]
        await jobs.finish_attempts(outcomes)
        done += len(claimed)
    result = _result(done, started, busy)
    await store.close()
    return result


def _result(done: int, started: float, busy: float) -> dict[str, Any]:
    wall = time.perf_counter() - started
    return {
        "jobs": done,
        "seconds": round(wall, 3),
        "jobs_per_s": round(done / wall, 1),
        # The whole machine's busy CPU (this process, the database server) per job.
        "machine_cpu_us_per_job": round((machine_busy_s() - busy) / max(done, 1) * 1e6, 1),
    }


_COMPLETE = (
    "UPDATE jobs SET status='completed', lease_owner=NULL, lease_expires_at=NULL, "
    "updated_at={p}, completed_at={p}, result_title={p}, result_suggestion={p}, error=NULL, "
    "error_class=NULL, prompt_tokens=prompt_tokens+{p}, completion_tokens=completion_tokens+{p} "
    "WHERE seq={p}"
)
_ATTEMPT = (
    "INSERT INTO job_attempts (job_seq, number, worker, started_at, ended_at, outcome, "
    "error_class, error, provider_latency_ms, prompt_tokens, completion_tokens) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, 'completed', NULL, NULL, NULL, 1, 1) "
    "ON CONFLICT (job_seq, number) DO UPDATE SET worker=excluded.worker, "
    "started_at=excluded.started_at, ended_at=excluded.ended_at, outcome=excluded.outcome"
)
#: The claim as the store sends it: the queued rows it takes picked in a subquery on
#: SQLite, and on PostgreSQL locked (SKIP LOCKED) in a CTE that runs once (as a plain IN
#: subquery the planner may rescan it: `SQLJobStore._picked`).
_PICKED = (
    "SELECT seq FROM jobs WHERE provider='echo' AND status='queued' "
    "ORDER BY priority DESC, fair_rank, seq LIMIT {p}"
)
_TAKE = (
    "UPDATE jobs SET status='running', lease_owner={p}, lease_expires_at={p}, "
    "attempts=attempts+1, started_at={p}, updated_at={p} WHERE seq IN ({picked}) "
    "AND status='queued' RETURNING *"
)
_PICK = (
    "SELECT seq, id, status, lease_owner, attempts, batch_id, EXISTS (SELECT 1 FROM "
    "webhook_endpoints w WHERE w.org_id = jobs.org_id) FROM jobs WHERE {among} ORDER BY seq"
)


async def raw_floor(url: str, count: int, batch: int) -> dict[str, Any]:
    """The same store calls as :func:`floor` (the same statements, schema and batches;
    on PostgreSQL a batch's outcomes and attempt records are one statement each over
    arrays, as the store sends them), straight through the driver (sqlite3, asyncpg) with
    no SQLAlchemy and no Job objects: what the database and driver alone cost per job."""
    _, store = await _stored(url, count)
    await store.close()
    if url.startswith("postgresql"):
        return await _raw_postgres(url, count, batch)
    return await asyncio.to_thread(_raw_sqlite, url.split(":///", 1)[1], count, batch)


def _raw_sqlite(path: str, count: int, batch: int) -> dict[str, Any]:
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    claim = _TAKE.format(p="?", picked=_PICKED.format(p="?"))
    complete, attempt = _COMPLETE.format(p="?"), _ATTEMPT.format(p="?")
    busy, started = machine_busy_s(), time.perf_counter()
    done = 0
    while done < count:
        now = str(utcnow().replace(tzinfo=None))
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(claim, ("floor", now, now, now, batch)).fetchall()
        db.execute("COMMIT")
        if not rows:
            break
        seqs = [r[0] for r in rows]
        ids = [r[1] for r in rows]
        db.execute("BEGIN IMMEDIATE")
        pick = _PICK.format(among=f"id IN ({','.join('?' * len(ids))})")
        db.execute(pick, ids).fetchall()
        db.executemany(complete, [(now, now, "t", "s", 1, 1, seq) for seq in seqs])
        db.executemany(attempt, [(seq, 1, "floor", now, now) for seq in seqs])
        db.execute("COMMIT")
        done += len(rows)
    result = _result(done, started, busy)
    db.close()
    return result


async def _raw_postgres(url: str, count: int, batch: int, loops: int = 4) -> dict[str, Any]:
    """``loops`` claim-and-finish loops side by side, one connection each (SKIP LOCKED
    keeps them apart), so the figure is not one connection's round trips."""
    import asyncpg

    dsn = "postgresql://" + url.split("://", 1)[1]
    picked = _PICKED.format(p="$5") + " FOR UPDATE SKIP LOCKED"
    take = _TAKE.format(p="{}", picked="SELECT seq FROM picked")
    claim = f"WITH picked AS ({picked}) " + take.format(*(f"${i}" for i in range(1, 5)))
    pick = _PICK.format(among="id = ANY($1::varchar[])") + " FOR UPDATE OF jobs"
    connections = [await asyncpg.connect(dsn) for _ in range(loops)]

    async def loop(conn: asyncpg.Connection) -> int:
        done = 0
        while True:
            now = utcnow()
            async with conn.transaction():
                rows = await conn.fetch(claim, "floor", now, now, now, batch)
            if not rows:
                return done
            async with conn.transaction():
                await conn.fetch(pick, [r["id"] for r in rows])
                # One statement each over arrays, as SQLJobStore sends them here.
                seqs = [r["seq"] for r in rows]
                await conn.execute(COMPLETE, seqs, now, "floor")
                await conn.execute(
                    ATTEMPTS, seqs, [r["attempts"] for r in rows], "floor", now, [now] * len(rows)
                )
            done += len(rows)

    busy, started = machine_busy_s(), time.perf_counter()
    done = sum(await asyncio.gather(*(loop(c) for c in connections)))
    result = _result(done, started, busy)
    for conn in connections:
        await conn.close()
    return result


def in_process(count: int) -> dict[str, Any]:
    """The per-job work outside the store that no job can skip, timed alone: the no-op
    agent's prompt rendered into a provider request, and one asyncio task handing a
    result back through a future (how a job runs beside the others)."""
    from copydesk.generation import build_request

    agent = agent_from(ROOT / "bench" / "engines" / "noop-agent.yaml")
    values = [{"text": [f"item {i}"]} for i in range(count)]
    started = time.perf_counter()
    for v in values:
        build_request(agent, v, None)
    render_s = time.perf_counter() - started

    async def tasks() -> float:
        loop = asyncio.get_running_loop()

        async def job(done: asyncio.Future[int]) -> None:
            done.set_result(1)

        begun = time.perf_counter()
        for start in range(0, count, 100):
            futures = [loop.create_future() for _ in range(min(100, count - start))]
            running = [loop.create_task(job(f)) for f in futures]
            await asyncio.gather(*futures, *running)
        return time.perf_counter() - begun

    task_s = asyncio.run(tasks())
    return {
        "render_us_per_job": round(render_s / count * 1e6, 1),
        "task_us_per_job": round(task_s / count * 1e6, 1),
    }


@contextmanager
def empty_database(kind: str) -> Iterator[str]:
    """The URL of a new, empty database: a PostgreSQL one, or a SQLite file."""
    if kind == "postgres":
        with fresh_database() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite+aiosqlite:///{Path(tmp) / 'floor.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--deployments", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    for name in args.deployments.split(","):
        # Through SQLJobStore, then the same statements straight through the driver; each
        # on a database of its own.
        for label, run in ((name, floor), (f"{name} (driver only)", raw_floor)):
            with empty_database(name) as url:
                result = asyncio.run(run(url, args.jobs, args.batch))
            rows.append({"database": label, "batch": args.batch, **result})
    outside = in_process(args.jobs)
    print(
        "database | jobs | batch | seconds | jobs/s (claim + outcome + attempt only) | "
        "machine CPU us/job"
    )
    for r in rows:
        print(
            f"{r['database']} | {r['jobs']} | {r['batch']} | {r['seconds']} | "
            f"{r['jobs_per_s']} | {r['machine_cpu_us_per_job']}"
        )
    per_job = outside["render_us_per_job"] + outside["task_us_per_job"]
    print(
        f"outside the store, per job: prompt + request {outside['render_us_per_job']} us, "
        f"a task and its future {outside['task_us_per_job']} us"
    )
    for r in rows:
        # What one worker could reach if nothing else cost anything: the store calls
        # plus the per-job work above, one after the other on one event loop.
        r["ceiling_jobs_per_s"] = round(1e6 / (1e6 / r["jobs_per_s"] + per_job), 1)
        r.update(outside)
        print(f"{r['database']}: ceiling with that work added: {r['ceiling_jobs_per_s']} jobs/s")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"record-floor-{stamp}.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
