"""SAQ (asyncio, Redis db 13). Worker: ``concurrency=C``, on uvloop. SAQ has no bulk
enqueue (``Queue.map`` gathers ``enqueue`` and also waits for results): ``Queue.enqueue``
per job, ``CHUNK`` gathered at a time. Completed = N - the queue's ``incomplete`` count.

    python -m bench.engines.saq_runner CONCURRENCY   # the worker
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from saq import Queue

from bench.engines.common import CHUNK, READY, REDIS_URL, Worker, python, spawn

URL = f"{REDIS_URL}/13"
QUEUE = "bench"


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def _startup(ctx: dict[str, Any]) -> None:
    print(READY, flush=True)


class SaqRunner:
    name = "saq"
    notes = "redis; concurrency=C, uvloop; bulk: none (gathered Queue.enqueue)"

    def __init__(self) -> None:
        self._queue: Queue | None = None
        self._count = 0

    async def reset(self) -> None:
        self._queue = Queue.from_url(URL, name=QUEUE)
        await self._queue.connect()
        await self._queue.redis.flushdb()  # type: ignore[attr-defined]

    def start_worker(self, concurrency: int) -> Worker:
        return spawn(python("-m", "bench.engines.saq_runner", str(concurrency)))

    async def enqueue(self, count: int) -> None:
        assert self._queue is not None
        self._count = count
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            await asyncio.gather(*(self._queue.enqueue("noop") for _ in range(n)))

    async def completed(self) -> int:
        assert self._queue is not None
        return self._count - await self._queue.count("incomplete")

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.disconnect()
            self._queue = None


def main() -> None:
    import uvloop
    from saq.worker import Worker as SaqWorker

    logging.basicConfig(level=logging.WARNING)

    async def run() -> None:
        queue = Queue.from_url(URL, name=QUEUE)
        worker = SaqWorker(queue, [noop], concurrency=int(sys.argv[1]), startup=_startup)
        try:
            await queue.connect()
            await worker.start()
        finally:
            await queue.disconnect()

    uvloop.run(run())


if __name__ == "__main__":
    main()
