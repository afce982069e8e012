"""The PgQueuer engine (scale-out): PgQueuer 1.6 entries beside our jobs table.

- Enqueue: the entry is written on the *same connection and in the same transaction*
  as the job row (``enqueue_hook``), so a job is never stored without being queued or
  queued without being stored. Retries, releases and reaped jobs get a new entry the
  same way, delayed with ``execute_after``.
- One entrypoint per provider, ``copydesk.<provider>``, each consumed by its own
  ``QueueManager`` (one connection) whose ``max_concurrent_tasks`` is the provider's
  ``max_concurrency`` plus ``Settings.prefetch``: each worker picks at most that many
  of the provider's jobs. The jobs picked are started and wait in the executor for a
  provider slot (:mod:`copydesk.limiters.slots`, advisory locks shared by every
  worker), which is what bounds the calls in flight to ``max_concurrency`` across the
  fleet. A slot is free again the moment a call returns, where PgQueuer would free its
  seat only after flushing the completion and polling again (0.1-0.25 s per job at
  saturation). No PgQueuer ``concurrency_limit`` on these entrypoints: its dequeue
  costs ~95 ms per batch with ~1,000 jobs picked (3 ms without).
- PgQueuer's heartbeats re-pick the entries of a killed worker after
  ``heartbeat_timeout``; our handler then starts the job only if it is queued or its
  lease has expired (a live duplicate is skipped), and a finished job is skipped.
- Uploaded files: an entry for ``copydesk.files`` (payload: the file id) is written in
  the transaction that stores or retries the file (``file_hook``); its handler claims
  that one file under a lease and extracts its text, ``file_concurrency`` at a time
  across every worker. The worker's file claim loop is then only a slow sweep for files
  whose entry was lost.
- Fair sharing and priorities are folded into PgQueuer's ``priority`` (higher first):
  ``priority * 10**6 - fair_rank``.

Our jobs table stays the record the API reads; PgQueuer's rows are only dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job as PgJob
from pgqueuer.queries import EntrypointExecutionParameter
from pgqueuer.types import QueueEntrypoint

from copydesk.errors import ConfigurationError
from copydesk.queue import FileRunner, JobRunner, JobStarter, RunningJobs
from copydesk.store import EnqueueHook, FileHook, Job

if TYPE_CHECKING:
    from copydesk.config import Settings
    from copydesk.stores.sql import SQLStore

log = logging.getLogger("copydesk.engines.pgqueuer")

ENTRYPOINT_PREFIX = "copydesk."
#: The entrypoint of uploaded files; no provider may be named "files" on this engine.
FILES_ENTRYPOINT = ENTRYPOINT_PREFIX + "files"
_RANK_SPAN = 1_000_000
#: Every job updates its row twice and PgQueuer's once and deletes it: without vacuum the
#: dead rows pile up and every dequeue wades through them (bench/README.md, Memory).
AUTOVACUUM_OFF = (
    "PostgreSQL's autovacuum is off: the jobs and queue tables keep every dead row and "
    "dispatch slows down as they grow (measured: 5,000 -> 2,400 jobs/s over 300,000 jobs); "
    "turn autovacuum on, or VACUUM the database regularly"
)
_INSTALL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('copydesk-pgqueuer-install'))"


def entrypoint(provider: str) -> str:
    return ENTRYPOINT_PREFIX + provider


def pg_priority(job: Job) -> int:
    """Higher runs first in PgQueuer: our priority, then the lowest fair rank."""
    priority = max(-2000, min(2000, job.priority))
    return priority * _RANK_SPAN - min(job.fair_rank, _RANK_SPAN - 1)


def dsn_of(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return "postgresql://" + url.split("://", 1)[1]


async def install_schema(conn: asyncpg.Connection) -> bool:
    """Install (or upgrade) PgQueuer's tables once; safe when several processes race."""
    queries = Queries(AsyncpgDriver(conn))
    async with conn.transaction():
        await conn.execute(_INSTALL_LOCK)
        if not await queries.schema_is_installed():
            await queries.install()
            return True
    # ALTER TYPE ... ADD VALUE must not share a transaction; it takes its own lock.
    await queries.apply_upgrade()
    return False


class PgQueuerQueue(RunningJobs):
    name = "pgqueuer"

    def __init__(self, store: SQLStore, concurrency: dict[str, int], settings: Settings) -> None:
        super().__init__()
        if "files" in concurrency:
            raise ConfigurationError(
                "a provider may not be named 'files' with the pgqueuer engine (its "
                "entrypoint would be the uploaded files' one); rename it in COPYDESK_PROVIDERS"
            )
        self._store = store
        self._concurrency = concurrency
        self._settings = settings

    # --- producer side ---------------------------------------------------------------

    @property
    def enqueue_hook(self) -> EnqueueHook | None:
        return self._enqueue

    @property
    def file_hook(self) -> FileHook | None:
        return self._dispatch_files

    @property
    def dispatches_files(self) -> bool:
        return True

    @property
    def reap_grace_s(self) -> float:
        # PgQueuer re-picks a dead worker's entries after heartbeat_timeout (= lease_s);
        # our reaper is the safety net for a job whose entry is gone (e.g. a handler
        # that crashed after PgQueuer counted it done).
        return 2 * self._settings.lease_s

    async def _enqueue(self, conn: Any, jobs: list[Job]) -> None:
        if not jobs:
            return
        raw = (await conn.get_raw_connection()).driver_connection
        if not raw.is_in_transaction():  # the job rows must have been written first
            raise RuntimeError("PgQueuer entries must be written in the job's transaction")
        # PgQueuer stores ``NOW() + execute_after``, and NOW() is when this transaction
        # began: measured from our clock, the delay would start early by however long
        # the transaction has been running (a batch of outcomes), and a retry would run
        # before its available_at (before a provider's Retry-After had passed).
        now: datetime = await raw.fetchval("SELECT now()")
        await Queries(AsyncpgDriver(raw)).enqueue(
            [entrypoint(j.provider) for j in jobs],
            [j.id.encode() for j in jobs],
            [pg_priority(j) for j in jobs],
            [max(timedelta(0), j.available_at - now) for j in jobs],
        )

    async def _dispatch_files(self, conn: Any, file_ids: list[str]) -> None:
        if not file_ids:
            return
        raw = (await conn.get_raw_connection()).driver_connection
        if not raw.is_in_transaction():  # the file rows must have been written first
            raise RuntimeError("PgQueuer entries must be written in the file's transaction")
        await Queries(AsyncpgDriver(raw)).enqueue(
            [FILES_ENTRYPOINT] * len(file_ids),
            [file_id.encode() for file_id in file_ids],
            [0] * len(file_ids),
        )

    async def open(self) -> None:
        conn = await asyncpg.connect(dsn_of(self._store.url))
        try:
            if await install_schema(conn):
                log.info("installed PgQueuer's schema")
            # Checked once here; each consuming manager skips it (_Manager).
            await QueueManager(Queries(AsyncpgDriver(conn))).verify_structure()
            if await conn.fetchval("SHOW autovacuum") == "off":
                log.warning(AUTOVACUUM_OFF)
        finally:
            await conn.close()

    async def close(self) -> None:
        return None

    def notify(self) -> None:
        return None  # PgQueuer wakes workers with LISTEN/NOTIFY after the commit

    # --- consumer side -----------------------------------------------------------------

    async def consume(
        self,
        run: JobRunner,
        start: JobStarter,
        owner: str,
        stop: asyncio.Event,
        run_file: FileRunner | None = None,
    ) -> None:
        del owner

        async def handle(pg_job: PgJob) -> None:
            job_id = (pg_job.payload or b"").decode()
            job = await start(job_id)
            if job is None:
                return  # finished, cancelled, or running under a live lease elsewhere
            task = asyncio.create_task(run(job), name=job.id)
            self.track(job.id, task)
            try:
                await task
            except asyncio.CancelledError:
                # Our shutdown deadline cancelled the job (the runner released it);
                # PgQueuer's own handler must still end normally.
                if not task.cancelled():
                    raise
            except Exception:
                # The runner records its own outcome; an error here (a store failure)
                # leaves the lease to expire and the reaper to re-queue the job.
                log.exception("job %s: runner failed", job_id)
            finally:
                self.untrack(job.id)

        # One QueueManager per provider, each with a budget of this worker's picks (the
        # provider's max_concurrency + prefetch; PgQueuer's max_concurrent_tasks). The
        # calls in flight are bounded across workers by the provider slots, not by a
        # PgQueuer concurrency_limit: its dequeue with per-entrypoint limits costs
        # ~95 ms per batch once ~1,000 jobs are picked (3 ms without), which capped a
        # worker at ~600 picks/s (bench/README.md, "Saturation").
        managers: list[tuple[QueueManager, int]] = []
        connections: list[asyncpg.Connection] = []

        async def manager() -> QueueManager:
            connections.append(await self._connect())
            return _Manager(Queries(AsyncpgDriver(connections[-1])))

        try:
            for provider, limit in self._concurrency.items():
                qm = await manager()
                budget = limit + self._settings.prefetch(limit)
                # PgQueuer's budget is at least 2 (twice a batch of 1): a budget of 1
                # (max_concurrency 1, no prefetch) is held by its concurrency_limit
                # instead, across workers, where the dequeue's cost does not matter.
                qm.entrypoint(entrypoint(provider), concurrency_limit=1 if budget < 2 else 0)(
                    handle
                )
                managers.append((qm, budget))
            if run_file is not None:
                # Files keep PgQueuer's concurrency_limit (file_concurrency across every
                # worker): few entries, so its dequeue stays cheap.
                qm = await manager()
                files_limit = self._settings.file_concurrency
                qm.entrypoint(FILES_ENTRYPOINT, concurrency_limit=files_limit)(
                    _file_handler(run_file)
                )
                managers.append((qm, files_limit))
            # Warm up before saying we take work: each connection's first dequeue, and
            # the first start batch, cost ~30 ms more than the next ones (statements
            # prepared, the new backends' catalog caches filled), which the first jobs
            # would otherwise wait for. Neither takes anything.
            for qm, budget in managers:
                await _warm_dequeue(qm, budget, self._settings.lease_s)
            await start(str(uuid.uuid4()))  # no such job
        except BaseException:
            for conn in connections:
                await conn.close()
            raise
        self.consuming.set()
        lease = self._settings.lease_s
        runners = [
            asyncio.create_task(
                qm.run(
                    # Short: a missed NOTIFY then costs a fraction of a second, not seconds.
                    dequeue_timeout=timedelta(seconds=min(0.25, self._settings.poll_interval_s)),
                    batch_size=_batch_size(budget),
                    max_concurrent_tasks=_max_tasks(budget),
                    heartbeat_timeout=timedelta(seconds=lease),
                ),
                name=f"pgqueuer:{index}",
            )
            for index, (qm, budget) in enumerate(managers)
        ]
        try:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({*runners, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            for qm, _ in managers:
                qm.shutdown.set()  # stop dequeuing; in-flight handlers run to their end
            await asyncio.gather(*runners)
        finally:
            for runner in runners:
                if not runner.done():
                    runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
            for conn in connections:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _connect(self) -> asyncpg.Connection:
        """A dispatch connection (one per manager). Each dequeue is planned for the queue
        as it is now (``force_custom_plan``): PostgreSQL may otherwise keep one plan for
        the prepared dequeue, made when the statistics last said the queue was empty (an
        ANALYZE between bursts), which reads every queued entry and sorts it: 10-660 ms
        per dequeue and ~400 jobs/s until the next ANALYZE, against ~4,200 jobs/s planned
        each time (bench/README.md, Memory). Planning each dequeue cost <= 3 % of the
        engine-overhead figure."""
        return await asyncpg.connect(
            dsn_of(self._store.url),
            server_settings={
                "application_name": "copydesk-dispatch",
                "plan_cache_mode": "force_custom_plan",
            },
        )


class _Manager(QueueManager):
    """A ``QueueManager`` that starts without PgQueuer's schema checks (some 15 catalog
    queries, one after another, before its first dequeue): :meth:`PgQueuerQueue.open`
    installed, upgraded and checked the schema once for the process."""

    async def verify_structure(self) -> None:
        return None


#: An entrypoint nobody enqueues: what the warm-up dequeue asks for.
WARM_ENTRYPOINT = QueueEntrypoint(ENTRYPOINT_PREFIX + "-warm-up-")


async def _warm_dequeue(qm: QueueManager, budget: int, lease_s: float) -> list[PgJob]:
    """Run the manager's dequeue once, as its loop will, for :data:`WARM_ENTRYPOINT`
    (so it takes nothing); returns what it took (nothing)."""
    return await qm.queries.dequeue(
        batch_size=_batch_size(budget),
        entrypoints={WARM_ENTRYPOINT: EntrypointExecutionParameter(0)},
        queue_manager_id=qm.queue_manager_id,
        global_concurrency_limit=_max_tasks(budget),
        heartbeat_timeout=timedelta(seconds=lease_s),
    )


def _batch_size(budget: int) -> int:
    """Entries one dequeue takes: up to 100, and at most half the budget (PgQueuer
    wants ``max_concurrent_tasks >= 2 * batch_size``)."""
    return max(1, min(100, budget // 2))


def _max_tasks(budget: int) -> int:
    """PgQueuer's ``max_concurrent_tasks`` for a budget (at least twice the batch)."""
    return max(budget, 2 * _batch_size(budget))


def _file_handler(run_file: FileRunner) -> Callable[[PgJob], Awaitable[None]]:
    async def handle_file(pg_job: PgJob) -> None:
        file_id = (pg_job.payload or b"").decode()
        try:
            await run_file(file_id)  # skips a file processed, deleted or held elsewhere
        except Exception:
            # The file keeps its lease until it expires; the worker's sweep takes it then.
            log.exception("file %s: processing failed", file_id)

    return handle_file
