"""Plain PgQueuer 1.6 (PostgreSQL, asyncpg): one no-op entrypoint, no concurrency limit.
Worker: ``QueueManager.run(batch_size=C/2, max_concurrent_tasks=C)`` (PgQueuer requires
max_concurrent_tasks >= 2 x batch_size), other settings default, on uvloop. Bulk:
``Queries.enqueue`` with lists (one INSERT of ``CHUNK`` rows). A finished job's row leaves
the ``pgqueuer`` table (logged to ``pgqueuer_log``), so completed = N - rows left.

    python -m bench.engines.pgqueuer_runner CONCURRENCY   # the worker
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job

from bench.engines.common import CHUNK, PG_DSN, READY, Worker, python, reset_pg_database, spawn


class PgQueuerRunner:
    name = "pgqueuer"
    notes = "postgres; batch_size=C/2, max_concurrent_tasks=C, uvloop; bulk: Queries.enqueue"

    def __init__(self) -> None:
        self._conn: asyncpg.Connection | None = None
        self._count = 0

    async def reset(self) -> None:
        await reset_pg_database()
        self._conn = await asyncpg.connect(PG_DSN)
        await Queries(AsyncpgDriver(self._conn)).install()

    def start_worker(self, concurrency: int) -> Worker:
        return spawn(python("-m", "bench.engines.pgqueuer_runner", str(concurrency)))

    async def enqueue(self, count: int) -> None:
        assert self._conn is not None
        self._count = count
        queries = Queries(AsyncpgDriver(self._conn))
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)

    async def completed(self) -> int:
        assert self._conn is not None
        return self._count - int(await self._conn.fetchval("SELECT count(*) FROM pgqueuer"))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def main() -> None:
    import uvloop

    logging.basicConfig(level=logging.WARNING)
    concurrency = int(sys.argv[1])

    async def run() -> None:
        conn = await asyncpg.connect(PG_DSN)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        await serve(qm, concurrency)
        await conn.close()

    uvloop.run(run())


async def serve(qm: QueueManager, concurrency: int) -> None:
    """Say ready and run ``qm`` with this runner's settings until SIGTERM or SIGINT (the
    ``pgqueuer+records`` bound runs its manager through here too)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    print(READY, flush=True)
    await qm.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)


if __name__ == "__main__":
    main()
