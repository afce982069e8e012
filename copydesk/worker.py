"""The worker: runs claimed jobs to an outcome, renews leases, reaps dead workers' jobs.

The same code runs inside ``copydesk serve`` (embedded default) and in any number of
``copydesk worker`` processes; only the :class:`~copydesk.queue.Queue` engine differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from copydesk.errors import CopydeskError, InvalidRequest, NotFound
from copydesk.flow import FlowControl, NoSlots, Slots
from copydesk.generation import Generator
from copydesk.jobs import CANCELLED_ERROR, Failure, RetryPolicy, classify
from copydesk.library import Library
from copydesk.provider import Message
from copydesk.queue import FileRunner, Queue
from copydesk.store import EnqueueHook, Job, JobStore, Outcome
from copydesk.subscriptions import Courier

log = logging.getLogger("copydesk.worker")

In = TypeVar("In")
Out = TypeVar("Out")


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _now() -> datetime:
    return datetime.now(UTC)


class Batcher(Generic[In, Out]):
    """Hands everything submitted while the previous call ran to one call of ``flush``.

    Under load the batches grow by themselves (no timer, no added latency when idle).
    ``submit`` returns once the batch holding its item is done (or raises with it).
    """

    def __init__(
        self, name: str, flush: Callable[[list[In]], Awaitable[list[Out]]], max_batch: int = 500
    ) -> None:
        self._name = name
        self._flush_call = flush
        self._max_batch = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        """Write everything submitted so far, then stop (a batch being written is not
        interrupted: its items were already taken off the pending list)."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._closing = False
        await self._flush()

    async def submit(self, item: In) -> Out:
        if self._task is None:  # not started: straight through
            return (await self._flush_call([item]))[0]
        return await asyncio.shield(self.submit_nowait(item))

    def submit_nowait(self, item: In) -> asyncio.Future[Out]:
        """Add ``item`` to the next batch; the future is done when its batch is."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return future

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def _loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._pending:
            size = self._max_batch
            batch, self._pending = self._pending[:size], self._pending[size:]
            try:
                results = await self._flush_call([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class OutcomeWriter(Batcher[Outcome, bool]):
    """Writes attempt outcomes in batches: everything that finished meanwhile, one commit.

    ``write`` returns once the outcome is durable (or raises), so a job is never reported
    done before its result is stored.
    """

    #: Outcomes handed over but not yet in a batch, at most; a runner waits beyond that.
    MAX_BACKLOG = 2000

    def __init__(self, jobs: JobStore, enqueue: EnqueueHook | None = None) -> None:
        async def flush(outcomes: list[Outcome]) -> list[bool]:
            return await jobs.finish_attempts(outcomes, enqueue)

        super().__init__("outcome-writer", flush)
        self._unwritten: dict[str, int] = {}

    async def write(self, outcome: Outcome) -> bool:
        return await self.submit(outcome)

    async def hand_over(self, outcome: Outcome) -> None:
        """Queue ``outcome`` for the next batch and return without waiting for the commit,
        so the provider slot the job held is free for the next job at once.

        Until the batch commits, the job stays ``running`` under this worker's lease (its
        id is in :meth:`unwritten`, renewed with the in-flight ones): a crash before the
        commit re-runs the job exactly as a crash during its provider call would. A
        failed commit is logged and leaves the lease to expire the same way."""
        if not self.started:
            await self.write(outcome)
            return
        if self.backlog >= self.MAX_BACKLOG:
            # The database is behind: wait for this outcome's own commit (backpressure).
            await self.write(outcome)
            return
        job_id = outcome.job_id
        self._unwritten[job_id] = self._unwritten.get(job_id, 0) + 1
        future = self.submit_nowait(outcome)
        future.add_done_callback(lambda done: self._written(job_id, done))

    def _written(self, job_id: str, done: asyncio.Future[bool]) -> None:
        left = self._unwritten.pop(job_id, 1) - 1
        if left > 0:
            self._unwritten[job_id] = left
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.error(
                "writing the outcome of job %s failed (its lease will expire and it runs "
                "again): %s",
                job_id,
                exc,
            )

    def unwritten(self) -> list[str]:
        """Jobs whose outcome is handed over but not yet committed."""
        return list(self._unwritten)


class JobStarter(Batcher[str, "Job | None"]):
    """Marks jobs handed over by id (the PgQueuer engine) running, in batches."""

    def __init__(self, jobs: JobStore, owner: str, lease_s: float) -> None:
        async def flush(job_ids: list[str]) -> list[Job | None]:
            started = {job.id: job for job in await jobs.start_jobs(job_ids, owner, lease_s)}
            # The same id twice in one batch (two queue entries) runs once.
            return [started.pop(job_id, None) for job_id in job_ids]

        # At most 100 per transaction: building the rows of 500 started jobs held the
        # event loop long enough to delay the calls returning meanwhile (saturation at
        # 1,000 x 1 s on PostgreSQL: 1.071-1.094 -> 1.058-1.065 of the ideal time).
        super().__init__("job-starter", flush, max_batch=100)


@dataclass(frozen=True)
class WorkerOptions:
    lease_s: float = 30.0
    shutdown_grace_s: float = 30.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: How often an idle worker looks for uploaded files to process (embedded engine).
    files_poll_s: float = 1.0
    #: How often a worker sweeps for files whose queue entry was lost (an engine that
    #: dispatches files); a file must have been left untouched this long to be swept.
    files_sweep_s: float = 30.0
    #: How often a worker checks whether any of its in-flight jobs was cancelled.
    cancel_poll_s: float = 0.5


class _GivenBack(BaseException):
    """A job the stopping worker gives back before its provider call (not an attempt's
    failure: a BaseException, so no ``except Exception`` classifies it)."""


class Executor:
    """Runs one job attempt: prepare, respect flow control, call the provider, record."""

    def __init__(
        self,
        jobs: JobStore,
        generator: Generator,
        flow: FlowControl,
        writer: OutcomeWriter,
        owner: str,
        policy: RetryPolicy,
        lease_s: float,
        enqueue: EnqueueHook | None = None,
        slots: Slots | None = None,
    ) -> None:
        self._enqueue = enqueue
        self._slots: Slots = slots or NoSlots()
        self._starter = JobStarter(jobs, owner, lease_s)
        self._jobs = jobs
        self._generator = generator
        self._flow = flow
        self._writer = writer
        self.owner = owner
        self._policy = policy
        self._lease_s = lease_s
        self._stopping = False
        # Jobs waiting for a provider slot (picked ahead by the engine), and those of them
        # a stop interrupted: they go back to the queue untouched.
        self._waiting: dict[str, asyncio.Task[None]] = {}
        self._given_back: set[str] = set()

    def open(self) -> None:
        self._starter.start()
        self._slots.warm()

    def stopping(self) -> None:
        """The worker stops: calls under way finish; jobs not yet at the provider (waiting
        for a slot, or arriving from now on) are given back to the queue as they were."""
        self._stopping = True
        for job_id, task in list(self._waiting.items()):
            self._given_back.add(job_id)
            task.cancel()

    async def close(self) -> None:
        await self._starter.stop()

    async def start(self, job_id: str) -> Job | None:
        return await self._starter.submit(job_id)

    async def run(self, job: Job) -> None:
        started = job.started_at or _now()
        base = Outcome(
            job_id=job.id,
            kind="",
            owner=self.owner,
            attempt=job.attempts,
            started_at=started,
            ended_at=started,
        )
        try:
            outcome = await self._attempt(job, base)
        except _GivenBack:
            # Stopping before the call: queued again as if never started (no attempt
            # used or recorded); another worker, or this one's successor, runs it.
            await asyncio.shield(self._jobs.unstart_jobs(self.owner, [job.id], self._enqueue))
            return
        except asyncio.CancelledError:
            if await asyncio.shield(self._jobs.cancelled_among([job.id])):
                # Cancelled by request (the provider call, if any, is aborted): the attempt
                # ends as cancelled; nothing is released, no result is written.
                cancelled = replace(
                    base,
                    kind="cancelled",
                    ended_at=_now(),
                    error=CANCELLED_ERROR,
                    error_class="cancelled",
                )
                await asyncio.shield(self._writer.write(cancelled))
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                return
            # Shutdown deadline: give the job back so another worker runs it now.
            await asyncio.shield(self._jobs.release_jobs(self.owner, [job.id], self._enqueue))
            raise
        await self._writer.hand_over(outcome)

    async def _take_slot(self, job_id: str, provider: str) -> int:
        """A provider slot; raises _GivenBack when the worker stops before one is free."""
        if self._stopping:
            raise _GivenBack
        task = asyncio.current_task()
        assert task is not None
        self._waiting[job_id] = task
        try:
            return await self._slots.acquire(provider)
        except asyncio.CancelledError:
            if job_id in self._given_back:
                self._given_back.discard(job_id)
                task.uncancel()
                raise _GivenBack from None
            raise
        finally:
            self._waiting.pop(job_id, None)

    async def _attempt(self, job: Job, base: Outcome) -> Outcome:
        latency_ms: int | None = None
        try:
            prepared = await self._generator.prepare_job(
                job.org_id, job.agent_id, job.agent_version, job.inputs
            )
            estimate = _estimate_tokens(prepared.request.messages) + prepared.request.max_tokens
            # Open the provider before taking a permit: its first use builds its clients
            # (or loads a model), and a permit must be taken as the request leaves, since
            # the provider counts arrivals.
            await self._generator.provider(prepared)
            # A provider slot (concurrency) is held for the call only: taken once the job
            # is ready to send, given back (or handed to a waiting job) as it returns.
            # The rate permit is taken after it, as the request leaves.
            slot = await self._take_slot(job.id, prepared.provider)
            try:
                permit = await self._flow.acquire(prepared.provider, estimate)
                called = time.perf_counter()
                try:
                    generation = await self._generator.run(prepared)
                finally:
                    latency_ms = round((time.perf_counter() - called) * 1000)
            finally:
                self._slots.release(prepared.provider, slot)
            await self._flow.settle(permit, generation.usage.total_tokens)
        except asyncio.CancelledError:
            raise
        except (InvalidRequest, NotFound) as exc:
            # The agent version or its inputs no longer make sense: nothing to retry.
            failure = Failure("invalid", exc.message, False)
            return self._failed(job, base, failure, latency_ms)
        except Exception as exc:
            if not isinstance(exc, CopydeskError):
                log.exception("job %s: unexpected error", job.id)
            failure = classify(exc)
            # The job's own allowance: retry_job extends it beyond the policy's default.
            policy = replace(self._policy, max_attempts=job.max_attempts)
            if policy.should_retry(failure, job.attempts):
                delay = self._policy.delay(job.attempts, failure.retry_after_s)
                now = _now()
                return replace(
                    base,
                    kind="retry",
                    ended_at=now,
                    error=failure.message,
                    error_class=failure.error_class,
                    provider_latency_ms=latency_ms,
                    available_at=now + timedelta(seconds=delay),
                )
            return self._failed(job, base, failure, latency_ms)
        return replace(
            base,
            kind="completed",
            ended_at=_now(),
            title=prepared.agent.spec.output.title,
            suggestion=generation.text,
            provider_latency_ms=latency_ms,
            prompt_tokens=generation.usage.prompt_tokens,
            completion_tokens=generation.usage.completion_tokens,
        )

    def _failed(self, job: Job, base: Outcome, failure: Failure, latency_ms: int | None) -> Outcome:
        message = failure.message
        if failure.transient:
            message = (
                f"gave up after {job.attempts} attempt(s); the last error was "
                f"{failure.error_class}: {failure.message}"
            )
        return replace(
            base,
            kind="failed",
            ended_at=_now(),
            error=message,
            error_class=failure.error_class,
            provider_latency_ms=latency_ms,
        )


#: A rough token cost of one image part (OpenAI counts 85-1105 by size and detail).
IMAGE_TOKENS = 765


def _estimate_tokens(messages: Sequence[Message]) -> int:
    chars = 0
    images = 0
    for message in messages:
        if isinstance(message.content, str):
            chars += len(message.content)
            continue
        for part in message.content:
            if part.get("type") == "image_url":
                images += 1
            else:
                chars += len(str(part.get("text", "")))
    return max(1, chars // 4) + images * IMAGE_TOKENS


class Worker:
    """One consuming worker: an engine, an executor, lease renewal and a reaper."""

    def __init__(
        self,
        jobs: JobStore,
        queue: Queue,
        generator: Generator,
        flow: FlowControl,
        options: WorkerOptions,
        owner: str | None = None,
        *,
        library: Library | None = None,
        courier: Courier | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.owner = owner or worker_name()
        self._courier = courier
        self._library = library
        self._jobs = jobs
        self._queue = queue
        self._options = options
        self._writer = OutcomeWriter(jobs, queue.enqueue_hook)
        self.executor = Executor(
            jobs,
            generator,
            flow,
            self._writer,
            self.owner,
            options.policy,
            options.lease_s,
            queue.enqueue_hook,
            slots,
        )
        self.stop_event = asyncio.Event()

    async def run(self) -> None:
        """Consume until :meth:`stop`; then finish or release in-flight jobs in the grace time."""
        self._writer.start()
        self.executor.open()
        helpers = [
            asyncio.create_task(self._renew_leases(), name="lease-renewal"),
            asyncio.create_task(self._reap(), name="reaper"),
            asyncio.create_task(self._watch_cancels(), name="cancel-watcher"),
        ]
        if self._library is not None:
            helpers.append(
                asyncio.create_task(self.process_pending(self._library), name="file-processor")
            )
        if self._courier is not None:
            helpers.append(asyncio.create_task(self._courier.run(), name="webhook-courier"))
        run_file = None
        if self._library is not None and self._queue.dispatches_files:
            run_file = self._file_runner(self._library)
        consumer = asyncio.create_task(
            self._queue.consume(
                self.executor.run, self.executor.start, self.owner, self.stop_event, run_file
            ),
            name="consumer",
        )
        try:
            await self.stop_event.wait()
            done, _ = await asyncio.wait({consumer}, timeout=self._options.shutdown_grace_s)
            if not done:
                log.warning("shutdown grace time over: releasing in-flight jobs")
                self._queue.cancel_inflight()
                await asyncio.wait({consumer}, timeout=10)
        finally:
            consumer.cancel()
            for task in helpers:
                task.cancel()
            await asyncio.gather(consumer, *helpers, return_exceptions=True)
            await self.executor.close()
            await self._writer.stop()

    async def until_ready(self, running: asyncio.Task[None]) -> None:
        """Return once this worker takes work (its engine's connections are open), or
        ``running`` (the task of :meth:`run`) has ended."""
        ready = asyncio.ensure_future(self._queue.consuming.wait())
        try:
            await asyncio.wait({ready, running}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()

    def stop(self) -> None:
        self.stop_event.set()
        self.executor.stopping()

    async def _watch_cancels(self) -> None:
        """Abort the in-flight jobs whose row says cancelled (cancelled through another
        process's API; in the API's own process the backlog aborts them at once)."""
        while True:
            await asyncio.sleep(self._options.cancel_poll_s)
            running = self._queue.inflight()
            if not running:
                continue
            try:
                cancelled = await self._jobs.cancelled_among(running)
            except Exception:
                log.exception("checking for cancelled jobs failed")
                continue
            if cancelled:
                self._queue.abort(cancelled)

    async def _renew_leases(self) -> None:
        interval = self._options.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = [*self._queue.inflight(), *self._writer.unwritten()]
                await self._jobs.renew_leases(self.owner, held, self._options.lease_s)
            except Exception:
                log.exception("renewing leases failed")

    @property
    def _file_lease_s(self) -> float:
        return max(60.0, self._options.lease_s * 10)

    def _file_runner(self, library: Library) -> FileRunner:
        async def run_file(file_id: str) -> None:
            await library.process_one(file_id, lease_s=self._file_lease_s)

        return run_file

    async def process_pending(self, library: Library) -> None:
        """Extract the text of uploaded documents, a few at a time, until cancelled.
        Claiming is safe across workers (leases; SKIP LOCKED on PostgreSQL).

        On the embedded engine this claim loop is how files get processed. On an engine
        that dispatches files (PgQueuer) it is only a slow sweep, one batch every
        ``files_sweep_s``, for files left untouched that long (their entry was lost)."""
        sweep = self._queue.dispatches_files
        idle_s = self._options.files_sweep_s if sweep else 0.0
        while True:
            try:
                done = await library.process_pending(
                    limit=4, lease_s=self._file_lease_s, idle_s=idle_s
                )
            except Exception:
                log.exception("processing uploaded files failed")
                done = 0
            if sweep:
                if done:
                    log.warning("processed %d file(s) whose queue entry was lost", done)
                await asyncio.sleep(self._options.files_sweep_s)
            elif not done:
                await asyncio.sleep(self._options.files_poll_s)

    async def _reap(self) -> None:
        interval = max(0.5, self._options.lease_s / 2)
        while True:
            try:
                reaped = await self._jobs.reap_expired(
                    self._queue.enqueue_hook, grace_s=self._queue.reap_grace_s
                )
                if reaped:
                    log.warning("re-queued %d job(s) whose worker stopped", len(reaped))
                    self._queue.notify()
            except Exception:
                log.exception("reaping expired leases failed")
            await asyncio.sleep(interval)
