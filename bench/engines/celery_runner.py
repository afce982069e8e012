"""Celery 5 with the Redis broker and the Redis result backend (db 10 and 11).

Worker: ``celery worker`` with the threads pool, ``-c C`` (one process; a prefork pool
would start C processes), gossip/mingle/heartbeat off, log level warning. Bulk: a
``group`` of ``CHUNK`` signatures per ``apply_async`` (Celery has no multi-message
publish; a group publishes its tasks over one producer). Completed = keys in the result
backend's database (one ``celery-task-meta-*`` per finished task).
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from celery import Celery, group
from celery.signals import worker_ready

from bench.engines.common import CHUNK, READY, REDIS_URL, Worker, python, spawn

BROKER = f"{REDIS_URL}/10"
BACKEND = f"{REDIS_URL}/11"

app = Celery("bench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_ignore_result=False,
    result_expires=None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> None:
    return None


@worker_ready.connect
def _ready(**_: object) -> None:
    print(READY, flush=True)


class CeleryRunner:
    name = "celery"

    def __init__(self) -> None:
        self.pool = os.environ.get("BENCH_CELERY_POOL", "threads")
        self.notes = (
            f"redis broker+backend; -P {self.pool} -c C (solo runs one at a time); "
            "bulk: group(...).apply_async"
        )
        self._redis = aioredis.from_url(BACKEND)

    async def reset(self) -> None:
        for url in (BROKER, BACKEND):
            r = aioredis.from_url(url)
            await r.flushdb()
            await r.aclose()

    def start_worker(self, concurrency: int) -> Worker:
        args = [
            "-m",
            "celery",
            "-A",
            "bench.engines.celery_runner:app",
            "worker",
            "-P",
            self.pool,
            "-l",
            "warning",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if self.pool != "solo":
            args += ["-c", str(concurrency)]
        return spawn(python(*args))

    async def enqueue(self, count: int) -> None:
        def publish() -> None:
            for start in range(0, count, CHUNK):
                group(noop.s() for _ in range(min(CHUNK, count - start))).apply_async()

        await asyncio.to_thread(publish)

    async def completed(self) -> int:
        return int(await self._redis.dbsize())

    async def close(self) -> None:
        await self._redis.aclose()
