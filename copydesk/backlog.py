"""Job operations for the API: submit (validated, durable, queued), read, list, retry,
cancel."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from copydesk.catalog import Catalog
from copydesk.errors import InvalidRequest, JobNotFound, Problem
from copydesk.generation import Generator
from copydesk.jobs import PRIORITY_MAX, PRIORITY_MIN, WireStatus, statuses_for
from copydesk.queue import Queue
from copydesk.store import Attempt, Job, JobPage, JobStore, NewJob


@dataclass(frozen=True)
class JobDetail:
    job: Job
    attempts: list[Attempt]


class Backlog:
    def __init__(
        self,
        jobs: JobStore,
        catalog: Catalog,
        generator: Generator,
        queue: Queue,
        max_attempts: int,
        page_max: int,
    ) -> None:
        self._jobs = jobs
        self._catalog = catalog
        self._generator = generator
        self._queue = queue
        self._max_attempts = max_attempts
        self.page_max = page_max

    async def submit(
        self, org_id: str, agent_id: str, raw_inputs: Any, *, priority: int | None = None
    ) -> Job:
        """Validate exactly as a synchronous call does, store, queue; then answer."""
        if priority is not None and not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise InvalidRequest(
                [
                    Problem(
                        f"'priority' must be between {PRIORITY_MIN} and {PRIORITY_MAX}",
                        "range",
                        input="priority",
                    )
                ]
            )
        prepared = await self._generator.validate(org_id, agent_id, raw_inputs)
        new = NewJob(
            id=str(uuid.uuid4()),
            org_id=org_id,
            agent_id=prepared.agent.id,
            agent_version=prepared.agent.version,
            provider=prepared.provider,
            inputs=[{"id": k, "value": v} for k, v in prepared.values.items()],
            max_attempts=self._max_attempts,
            priority=priority or 0,
        )
        (job,) = await self._jobs.create_jobs([new], self._queue.enqueue_hook)
        self._queue.notify()
        return job

    async def get(self, org_id: str, job_id: str) -> JobDetail:
        found = await self._jobs.get_job_detail(org_id, job_id)
        if found is None:
            raise JobNotFound(job_id)
        return JobDetail(*found)

    async def page(
        self, org_id: str, agent_id: str, status: WireStatus | None, offset: int, limit: int
    ) -> JobPage:
        problems = []
        if offset < 0:
            problems.append(Problem("'offset' must be 0 or more", "offset", input="offset"))
        if not 1 <= limit <= self.page_max:
            problems.append(
                Problem(f"'limit' must be between 1 and {self.page_max}", "limit", input="limit")
            )
        if problems:
            raise InvalidRequest(problems)
        await self._catalog.get(org_id, agent_id)  # 404 for an unknown application
        statuses = statuses_for(status) if status else None
        return await self._jobs.list_jobs(org_id, agent_id, statuses, offset, limit)

    async def retry(self, org_id: str, job_id: str) -> Job:
        job = await self._jobs.retry_job(
            org_id, job_id, self._max_attempts, self._queue.enqueue_hook
        )
        self._queue.notify()
        return job

    async def cancel(self, org_id: str, job_id: str) -> JobDetail:
        """Cancel a queued or running job; a finished one (cancelled included) is answered
        as it is. A running attempt in this process is aborted at once; in another worker
        process, within that worker's ``cancel_poll_s``."""
        cancelled = await self._jobs.cancel_jobs(org_id, [job_id])
        if cancelled:
            self._queue.abort([job.id for job in cancelled])
        return await self.get(org_id, job_id)
