"""procrastinate 3 (PostgreSQL, psycopg 3). Worker: ``run_worker_async(concurrency=C)``
with LISTEN/NOTIFY (the default), on uvloop. Bulk: ``Task.batch_defer_async`` (one
INSERT of ``CHUNK`` rows). Completed = rows of ``procrastinate_jobs`` with status
``succeeded``.

    python -m bench.engines.procrastinate_runner CONCURRENCY   # the worker
"""

from __future__ import annotations

import logging
import sys

import asyncpg
from procrastinate import App, PsycopgConnector

from bench.engines.common import CHUNK, PG_DSN, READY, Worker, python, reset_pg_database, spawn

app = App(connector=PsycopgConnector(conninfo=PG_DSN))


@app.task(name="noop")
async def noop() -> None:
    return None


class ProcrastinateRunner:
    name = "procrastinate"
    notes = "postgres; concurrency=C, LISTEN/NOTIFY, uvloop; bulk: Task.batch_defer_async"

    def __init__(self) -> None:
        self._conn: asyncpg.Connection | None = None

    async def reset(self) -> None:
        await reset_pg_database()
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            # The producer's pool stays open for the enqueue (opened again there).
        self._conn = await asyncpg.connect(PG_DSN)

    def start_worker(self, concurrency: int) -> Worker:
        return spawn(python("-m", "bench.engines.procrastinate_runner", str(concurrency)))

    async def enqueue(self, count: int) -> None:
        async with app.open_async():
            for start in range(0, count, CHUNK):
                await noop.batch_defer_async(*({} for _ in range(min(CHUNK, count - start))))

    async def completed(self) -> int:
        assert self._conn is not None
        return int(
            await self._conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def main() -> None:
    import uvloop

    logging.basicConfig(level=logging.WARNING)

    async def run() -> None:
        async with app.open_async():
            print(READY, flush=True)
            await app.run_worker_async(concurrency=int(sys.argv[1]))

    uvloop.run(run())


if __name__ == "__main__":
    main()
