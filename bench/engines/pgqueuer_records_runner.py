"""PgQueuer plus Copydesk's record keeping and nothing else: how fast *any* Copydesk on
PgQueuer could go on this machine, with our records written in their cheapest form.

Not a peer (it is not ranked as one): a bound for the ``copydesk-postgres`` row. Each job
gets exactly the rows Copydesk keeps for it, straight through asyncpg, with no
SQLAlchemy, no Job objects, no prompt, no provider, no flow control and no webhooks:

- producer: per chunk, one transaction that inserts the job rows into Copydesk's own
  ``jobs`` table (one ``INSERT ... SELECT FROM unnest`` of arrays, as
  ``SQLJobStore.create_jobs`` does on PostgreSQL) and their PgQueuer entries (payload:
  the job id), as the API does;
- worker: plain PgQueuer with the plain runner's settings; the handler marks its job
  running under a lease in batches (one ``UPDATE ... WHERE id = ANY ... RETURNING`` per
  batch of at most 100, copydesk's ``JobStarter`` batching), does nothing, and hands the
  outcome to a batch writer without waiting for its commit (``OutcomeWriter.hand_over``):
  one ``UPDATE`` over ``unnest`` for the jobs and one ``INSERT`` over ``unnest`` for their
  attempt records per batch;
- completed: the jobs whose row says ``completed``.

    python -m bench.engines.pgqueuer_records_runner CONCURRENCY   # the worker
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job as PgJob

from bench.engines.common import (
    CHUNK,
    PG_DSN,
    Worker,
    migrated_org,
    python,
    reset_pg_database,
    spawn,
)
from bench.engines.pgqueuer_runner import serve

ENTRYPOINT = "copydesk.echo"
LEASE = timedelta(seconds=30)

#: The rows Copydesk keeps, in their cheapest form (``bench.record_floor`` sends the same
#: outcome statements on PostgreSQL).
_INSERT = (
    "INSERT INTO jobs (id, org_id, agent_id, agent_version, provider, inputs, status, "
    "priority, fair_rank, attempts, max_attempts, available_at, created_at, updated_at, "
    "prompt_tokens, completion_tokens) SELECT id, $2, 'noop', 1, 'echo', inputs, 'queued', "
    "0, rank, 0, 3, $4, $4, $4, 0, 0 FROM unnest($1::varchar[], $3::json[], $5::bigint[]) "
    "AS v(id, inputs, rank)"
)
START = (
    "UPDATE jobs SET status = 'running', lease_owner = $2, lease_expires_at = $3, "
    "attempts = attempts + 1, started_at = $4, updated_at = $4 "
    "WHERE id = ANY($1::varchar[]) AND status || '' = 'queued' "
    "RETURNING id, seq, attempts, started_at"
)
COMPLETE = (
    "UPDATE jobs SET status = 'completed', result_title = 'echo', result_suggestion = 'ping', "
    "error = NULL, error_class = NULL, completed_at = $2, updated_at = $2, "
    "prompt_tokens = prompt_tokens + 1, completion_tokens = completion_tokens + 1, "
    "lease_owner = NULL, lease_expires_at = NULL FROM unnest($1::bigint[]) AS v(seq) "
    "WHERE jobs.seq = v.seq AND jobs.status || '' = 'running' AND jobs.lease_owner = $3"
)
ATTEMPTS = (
    "INSERT INTO job_attempts (job_seq, number, worker, started_at, ended_at, outcome, "
    "prompt_tokens, completion_tokens) SELECT seq, number, $3, started, $4, 'completed', 1, 1 "
    "FROM unnest($1::bigint[], $2::int[], $5::timestamptz[]) AS v(seq, number, started)"
)


class PgQueuerRecordsRunner:
    name = "pgqueuer+records"
    notes = (
        "bound, not a peer: plain PgQueuer (its runner's settings) + Copydesk's rows per job "
        "(jobs insert, running, completed, attempt) straight through asyncpg, in batches"
    )

    def __init__(self) -> None:
        self._conn: asyncpg.Connection | None = None
        self._org = ""
        self._rank = 0

    async def reset(self) -> None:
        await reset_pg_database()
        self._org = await migrated_org(PG_DSN.replace("postgresql://", "postgresql+asyncpg://"))
        self._conn = await asyncpg.connect(PG_DSN)
        await Queries(AsyncpgDriver(self._conn)).install()

    def start_worker(self, concurrency: int) -> Worker:
        return spawn(python("-m", "bench.engines.pgqueuer_records_runner", str(concurrency)))

    async def enqueue(self, count: int) -> None:
        conn = self._conn
        assert conn is not None
        queries = Queries(AsyncpgDriver(conn))
        inputs = json.dumps([{"id": "text", "value": ["ping"]}])
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            ids = [str(uuid.uuid4()) for _ in range(n)]
            ranks = list(range(self._rank + 1, self._rank + n + 1))
            self._rank += n
            async with conn.transaction():
                now = datetime.now(UTC)
                await conn.execute(_INSERT, ids, self._org, [inputs] * n, now, ranks)
                await queries.enqueue([ENTRYPOINT] * n, [i.encode() for i in ids], [0] * n)

    async def completed(self) -> int:
        assert self._conn is not None
        return int(
            await self._conn.fetchval(
                "SELECT count(*) FROM jobs WHERE org_id = $1 AND agent_id = 'noop' "
                "AND status = 'completed'",
                self._org,
            )
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def main() -> None:
    import uvloop

    from copydesk.worker import Batcher

    logging.basicConfig(level=logging.WARNING)
    concurrency = int(sys.argv[1])
    owner = f"{socket.gethostname()}-bound"

    async def run() -> None:
        # Each statement planned for its own arrays (asyncpg prepares them, and a generic
        # plan cannot see the arrays' sizes). The status tests are written ``status || ''``
        # as in SQLJobStore: without statistics PostgreSQL read every queued (running) row
        # through ix_jobs_claim (ix_jobs_lease) for each batch instead of finding the rows
        # by id (seq).
        settings = {"plan_cache_mode": "force_custom_plan"}
        conn, starts, finishes = [
            await asyncpg.connect(PG_DSN, server_settings=settings) for _ in range(3)
        ]

        async def start(ids: list[str]) -> list[asyncpg.Record | None]:
            now = datetime.now(UTC)
            rows = await starts.fetch(START, ids, owner, now + LEASE, now)
            by_id = {r["id"]: r for r in rows}
            return [by_id.pop(i, None) for i in ids]

        async def finish(done: list[asyncpg.Record]) -> list[bool]:
            now = datetime.now(UTC)
            seqs = [r["seq"] for r in done]
            async with finishes.transaction():
                await finishes.execute(COMPLETE, seqs, now, owner)
                await finishes.execute(
                    ATTEMPTS,
                    seqs,
                    [r["attempts"] for r in done],
                    owner,
                    now,
                    [r["started_at"] for r in done],
                )
            return [True] * len(done)

        starter: Batcher[str, asyncpg.Record | None] = Batcher("start", start, max_batch=100)
        writer: Batcher[asyncpg.Record, bool] = Batcher("finish", finish)
        starter.start()
        writer.start()
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(ENTRYPOINT)
        async def handle(job: PgJob) -> None:
            row = await starter.submit((job.payload or b"").decode())
            if row is not None:
                writer.submit_nowait(row)  # the no-op's outcome, written in the next batch

        await serve(qm, concurrency)  # the plain runner's settings
        await starter.stop()
        await writer.stop()
        for c in (conn, starts, finishes):
            await c.close()

    uvloop.run(run())


if __name__ == "__main__":
    main()
