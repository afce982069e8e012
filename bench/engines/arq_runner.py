"""arq (asyncio, Redis db 12). Worker: ``max_jobs=C``, default ``poll_delay`` (0.5 s when
the queue is empty), on uvloop. arq has no bulk enqueue: ``ArqRedis.enqueue_job`` per job,
``CHUNK`` of them gathered at a time. A job stays in the ``arq:queue`` sorted set until it
has finished (its result is written in the same transaction), so completed = N - ZCARD.

    python -m bench.engines.arq_runner CONCURRENCY   # the worker
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name

from bench.engines.common import CHUNK, READY, Worker, python, spawn

SETTINGS = RedisSettings(host="127.0.0.1", port=6379, database=12)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def _startup(ctx: dict[str, Any]) -> None:
    print(READY, flush=True)


class ArqRunner:
    name = "arq"
    notes = "redis; max_jobs=C, uvloop; bulk: none (gathered enqueue_job)"

    def __init__(self) -> None:
        self._pool: Any = None
        self._count = 0

    async def reset(self) -> None:
        self._pool = await create_pool(SETTINGS)
        await self._pool.flushdb()

    def start_worker(self, concurrency: int) -> Worker:
        return spawn(python("-m", "bench.engines.arq_runner", str(concurrency)))

    async def enqueue(self, count: int) -> None:
        self._count = count
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            await asyncio.gather(*(self._pool.enqueue_job("noop") for _ in range(n)))

    async def completed(self) -> int:
        return self._count - int(await self._pool.zcard(default_queue_name))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


def main() -> None:
    import uvloop
    from arq.worker import run_worker

    logging.basicConfig(level=logging.WARNING)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())

    class Settings:
        functions = [noop]
        redis_settings = SETTINGS
        max_jobs = int(sys.argv[1])
        on_startup = _startup

    run_worker(Settings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
