"""The embedded engine: workers claim straight from the jobs table (SQLite or PostgreSQL).

Per provider, a claim loop keeps up to ``max_concurrency + prefetch`` jobs in this
process, claiming fairest-first in batches. The provider's slots (:class:`LocalSlots`)
hold the calls in flight at ``max_concurrency``; the jobs claimed ahead wait, prepared,
for the slot a returning call frees, so a slot is refilled without a claim's round trip
to the database. With several worker processes on PostgreSQL, claims use ``FOR UPDATE
SKIP LOCKED``; the concurrency bound is then per process (the PgQueuer engine bounds it
across processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from copydesk.queue import FileRunner, JobRunner, JobStarter, RunningJobs
from copydesk.store import EnqueueHook, FileHook, Job, JobStore

log = logging.getLogger("copydesk.engines.embedded")

CLAIM_BATCH = 256


class EmbeddedQueue(RunningJobs):
    name = "embedded"

    def __init__(
        self,
        jobs: JobStore,
        concurrency: dict[str, int],
        *,
        lease_s: float,
        poll_interval_s: float = 1.0,
        prefetch: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self._jobs = jobs
        # Jobs held per provider: its calls in flight plus the ones picked ahead.
        self._capacity = {p: n + (prefetch or {}).get(p, 0) for p, n in concurrency.items()}
        self._lease_s = lease_s
        self._poll_interval_s = poll_interval_s
        self._wake: dict[str, asyncio.Event] = {}

    @property
    def enqueue_hook(self) -> EnqueueHook | None:
        return None  # the jobs table is the queue

    @property
    def file_hook(self) -> FileHook | None:
        return None  # the files table is the queue: the worker's claim loop

    @property
    def dispatches_files(self) -> bool:
        return False

    @property
    def reap_grace_s(self) -> float:
        return 0.0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def notify(self) -> None:
        for event in self._wake.values():
            event.set()

    async def consume(
        self,
        run: JobRunner,
        start: JobStarter,
        owner: str,
        stop: asyncio.Event,
        run_file: FileRunner | None = None,
    ) -> None:
        del start  # claims mark jobs running in the same statement
        del run_file  # files are claimed by the worker's own loop
        loops = [
            asyncio.create_task(self._provider_loop(p, n, run, owner, stop), name=f"claim:{p}")
            for p, n in self._capacity.items()
        ]
        self.consuming.set()
        try:
            await stop.wait()
        finally:
            for event in self._wake.values():
                event.set()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _provider_loop(
        self, provider: str, limit: int, run: JobRunner, owner: str, stop: asyncio.Event
    ) -> None:
        wake = self._wake.setdefault(provider, asyncio.Event())
        inflight: set[asyncio.Task[None]] = set()
        slot_free = asyncio.Event()

        def done(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            self.untrack(task.get_name())
            slot_free.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("job runner failed", exc_info=task.exception())

        while not stop.is_set():
            free = limit - len(inflight)
            claimed: list[Job] = []
            if free > 0:
                try:
                    claimed = await self._jobs.claim_jobs(
                        provider, min(free, CLAIM_BATCH), owner, self._lease_s
                    )
                except Exception:
                    log.exception("claiming jobs of %s failed; retrying", provider)
                    await _sleep_or(stop, self._poll_interval_s)
                    continue
                for job in claimed:
                    task = asyncio.create_task(run(job), name=job.id)
                    self.track(job.id, task)
                    inflight.add(task)
                    task.add_done_callback(done)
            if claimed and len(inflight) < limit:
                continue  # there may be more right away
            # Wait for a free slot (when full) or for new work / a due retry (when idle).
            waiter = slot_free if len(inflight) >= limit else wake
            waiter.clear()
            timeout = self._poll_interval_s
            if waiter is wake:
                due = await self._jobs.next_due(provider)
                if due is not None:
                    timeout = min(timeout, max(0.0, (due - datetime.now(UTC)).total_seconds()))
            await _wait_any(waiter, stop, timeout)
        # Stopping: let the worker decide how long running jobs may take.
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, max_wait_s: float) -> None:
    if max_wait_s <= 0:
        return
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, timeout=max_wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
