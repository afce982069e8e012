"""The ``Queue`` port: how stored jobs reach workers.

Two engines implement it (:mod:`copydesk.engines`): the embedded one claims straight
from the jobs table; PgQueuer dispatches entries it keeps beside the jobs table, written
in the same transaction, and dispatches uploaded files the same way (the embedded engine
leaves them to the worker's claim loop). Everything above this port (the API, the executor, leases,
retries, results) is the same code for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from copydesk.store import EnqueueHook, FileHook, Job

#: Runs one claimed job to an outcome; the engine calls it, bounded by its concurrency.
JobRunner = Callable[[Job], Coroutine[Any, Any, None]]
#: Marks one job (by id) running under this worker; None when it should be skipped.
JobStarter = Callable[[str], Awaitable[Job | None]]
#: Processes one uploaded file (by id), if it still waits; engines that dispatch files call it.
FileRunner = Callable[[str], Coroutine[Any, Any, None]]


class Queue(Protocol):
    name: str
    #: Set once ``consume`` takes work (its connections are open): the worker is ready.
    consuming: asyncio.Event

    @property
    def enqueue_hook(self) -> EnqueueHook | None:
        """Called inside the transaction that stores (or re-queues) jobs."""
        ...

    @property
    def file_hook(self) -> FileHook | None:
        """Called inside the transaction that stores (or retries) files to process; None
        when the engine does not dispatch files."""
        ...

    @property
    def dispatches_files(self) -> bool:
        """Whether ``consume`` hands uploaded files to ``run_file`` (PgQueuer). The worker's
        file claim loop is then only a slow safety net; otherwise it is the engine."""
        ...

    @property
    def reap_grace_s(self) -> float:
        """How long after a lease expires the worker's reaper re-queues the job. The
        embedded engine relies on the reaper (0); PgQueuer re-picks a dead worker's
        entries itself, so the reaper there is only a late safety net."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def notify(self) -> None:
        """New work was stored by this process (a hint; engines also poll)."""
        ...

    async def consume(
        self,
        run: JobRunner,
        start: JobStarter,
        owner: str,
        stop: asyncio.Event,
        run_file: FileRunner | None = None,
    ) -> None:
        """Feed jobs to ``run`` until ``stop`` is set, then return without claiming more.
        An engine that ``dispatches_files`` feeds uploaded files' ids to ``run_file``.

        ``run`` must be awaited to completion for every job handed over; the worker
        bounds how long that may take after ``stop``.
        """
        ...

    def inflight(self) -> list[str]:
        """Ids of the jobs this consumer is running now (for lease renewal)."""
        ...

    def cancel_inflight(self) -> None:
        """Cancel the running jobs (shutdown deadline passed); their runners release them."""
        ...

    def abort(self, job_ids: list[str]) -> list[str]:
        """Cancel the tasks running these jobs here (the jobs were cancelled by request;
        their runners record the attempt as cancelled); the ids that were running here.
        A job is aborted once: asking again while its runner winds down does nothing."""
        ...


class RunningJobs:
    """The jobs a consumer is running, by id: what ``Queue.inflight``,
    ``Queue.cancel_inflight`` and ``Queue.abort`` report and act on. Engines inherit it."""

    def __init__(self) -> None:
        self.consuming = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._aborted: set[str] = set()

    def track(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._running[job_id] = task

    def untrack(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self._aborted.discard(job_id)

    def inflight(self) -> list[str]:
        return list(self._running)

    def cancel_inflight(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    def abort(self, job_ids: list[str]) -> list[str]:
        aborted = []
        for job_id in job_ids:
            task = self._running.get(job_id)
            if task is None or task.done() or job_id in self._aborted:
                continue
            self._aborted.add(job_id)
            task.cancel()
            aborted.append(job_id)
        return aborted
