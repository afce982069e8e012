"""Batch operations for the API: submit (every row validated, all stored in one
transaction), read, list, export results, retry the failed rows, cancel, follow progress.

The formats and statuses are described in :mod:`copydesk.batches`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from copydesk.batches import (
    BATCH_PRIORITY,
    PRIORITY_RANGE,
    Batch,
    BatchJob,
    BatchJobQuery,
    BatchStore,
    BodyFormat,
    NewBatch,
    NewRow,
    ParsedRow,
    RequestCounts,
    csv_header_line,
    csv_line,
    jsonl_line,
    parse_body,
)
from copydesk.catalog import Catalog
from copydesk.errors import (
    BatchNotFound,
    BatchNotRetryable,
    InvalidInputs,
    InvalidRequest,
    Problem,
)
from copydesk.generation import Generator
from copydesk.jobs import ACTIVE
from copydesk.queue import Queue
from copydesk.store import NewJob

#: Rows read per query when results are exported (keyset pages by row_index).
EXPORT_PAGE = 1000
#: Row events read per poll when progress is followed.
EVENTS_PAGE = 1000
ExportFormat = Literal["jsonl", "csv"]
JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class RowReport:
    row_index: int
    custom_id: str | None
    problems: list[Problem]


@dataclass(frozen=True)
class DryRun:
    """What submitting would do: every row's problems (none created)."""

    application_id: str
    rows: list[RowReport]

    @property
    def invalid(self) -> int:
        return sum(1 for r in self.rows if r.problems)


@dataclass(frozen=True)
class Event:
    """One server-sent event: ``progress`` (counts), ``row`` (a row ended) or ``done``;
    a ``heartbeat`` carries nothing."""

    kind: Literal["progress", "row", "done", "heartbeat"]
    data: dict[str, Any] = field(default_factory=dict)


class Batches:
    def __init__(
        self,
        store: BatchStore,
        catalog: Catalog,
        generator: Generator,
        queue: Queue,
        max_attempts: int,
        max_rows: int,
        page_max: int,
        poll_s: float = 0.5,
        heartbeat_s: float = 15.0,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._generator = generator
        self._queue = queue
        self._max_attempts = max_attempts
        self.max_rows = max_rows
        self.page_max = page_max
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s

    # --- submit ------------------------------------------------------------------------

    async def submit(
        self,
        org_id: str,
        agent_id: str,
        body: bytes,
        fmt: BodyFormat,
        *,
        priority: int | None = None,
        dry_run: bool = False,
    ) -> Batch | DryRun:
        """Validate every row exactly as a job is validated; unless ``dry_run``, store the
        batch and one job per row in one transaction (all or nothing)."""
        if priority is None:
            priority = BATCH_PRIORITY
        low, high = PRIORITY_RANGE
        if not low <= priority <= high:
            raise InvalidRequest(
                [Problem(f"'priority' must be between {low} and {high}", "priority")]
            )
        try:
            # in a thread: the event loop keeps serving other requests meanwhile
            parsed = await asyncio.to_thread(parse_body, body, fmt)
        except ValueError as exc:
            raise InvalidRequest([Problem(str(exc), "batch_body")]) from exc
        if not parsed:
            raise InvalidRequest([Problem("a batch needs at least one row", "batch_empty")])
        if len(parsed) > self.max_rows:
            raise InvalidRequest(
                [
                    Problem(
                        f"a batch takes at most {self.max_rows} rows, got {len(parsed)}",
                        "batch_rows",
                    )
                ]
            )
        agent, provider, checked = await self._generator.validate_many(
            org_id, agent_id, [row.inputs for row in parsed]
        )
        reports = _reports(parsed, [problems for _values, problems in checked])
        if dry_run:
            return DryRun(agent.id, reports)
        invalid = [r for r in reports if r.problems]
        if invalid:
            raise InvalidInputs(
                [
                    Problem(
                        f"row {r.row_index}"
                        + (f" (custom_id {r.custom_id!r})" if r.custom_id else "")
                        + f": {p.description}",
                        p.rule,
                        input=p.input,
                        extras={"row_index": r.row_index, "custom_id": r.custom_id},
                    )
                    for r in invalid
                    for p in r.problems
                ]
            )
        batch_id = str(uuid.uuid4())
        rows = [
            NewRow(
                job=NewJob(
                    id=str(uuid.uuid4()),
                    org_id=org_id,
                    agent_id=agent.id,
                    agent_version=agent.version,
                    provider=provider,
                    inputs=[{"id": k, "value": v} for k, v in values.items()],
                    max_attempts=self._max_attempts,
                    priority=priority,
                ),
                row_index=row.row_index,
                custom_id=row.custom_id,
            )
            for row, (values, _problems) in zip(parsed, checked, strict=True)
        ]
        batch = await self._store.create_batch(
            NewBatch(batch_id, org_id, agent.id, agent.version, priority),
            rows,
            self._queue.enqueue_hook,
        )
        self._queue.notify()
        return batch

    # --- read ------------------------------------------------------------------------------

    async def get(self, org_id: str, batch_id: str) -> Batch:
        batch = await self._store.get_batch(org_id, batch_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    async def page(
        self, org_id: str, agent_id: str | None, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        if not 1 <= limit <= self.page_max:
            raise InvalidRequest(
                [Problem(f"'limit' must be between 1 and {self.page_max}", "limit", input="limit")]
            )
        if agent_id is not None:
            await self._catalog.get(org_id, agent_id)  # 404 for an unknown application
        return await self._store.list_batches(org_id, agent_id, limit, after)

    async def jobs(
        self,
        org_id: str,
        batch_id: str,
        status: str | None,
        custom_id: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[BatchJob], int]:
        problems = []
        statuses: tuple[str, ...] | None = None
        if status == "in_progress":
            statuses = ACTIVE
        elif status is not None:
            if status not in JOB_STATUSES:
                allowed = ", ".join(("in_progress", *JOB_STATUSES))
                problems.append(
                    Problem(f"'status' must be one of {allowed}", "status", input="status")
                )
            statuses = (status,)
        if offset < 0:
            problems.append(Problem("'offset' must be 0 or more", "offset", input="offset"))
        if not 1 <= limit <= self.page_max:
            problems.append(
                Problem(f"'limit' must be between 1 and {self.page_max}", "limit", input="limit")
            )
        if problems:
            raise InvalidRequest(problems)
        await self.get(org_id, batch_id)
        query = BatchJobQuery(statuses, custom_id, offset, limit)
        return await self._store.list_batch_jobs(org_id, batch_id, query)

    async def results(self, org_id: str, batch_id: str, fmt: ExportFormat) -> AsyncIterator[str]:
        """The export, checked up front (404 before streaming starts); then its lines, in
        row order, read a page at a time."""
        batch = await self.get(org_id, batch_id)
        names: list[str] = []
        if fmt == "csv":
            agent = await self._catalog.get(org_id, batch.agent_id, batch.agent_version)
            names = [i.name for i in agent.spec.inputs]
        return self._lines(batch.id, fmt, names)

    async def _lines(
        self, batch_id: str, fmt: ExportFormat, names: list[str]
    ) -> AsyncIterator[str]:
        if fmt == "csv":
            yield csv_header_line(names)
        after = -1
        while True:
            rows = await self._store.result_rows(batch_id, after, EXPORT_PAGE)
            if not rows:
                return
            if fmt == "csv":
                yield "".join(csv_line(r, names) for r in rows)
            else:
                yield "".join(jsonl_line(r) for r in rows)
            after = rows[-1].row_index
            if len(rows) < EXPORT_PAGE:
                return

    # --- change ----------------------------------------------------------------------------

    async def retry(self, org_id: str, batch_id: str) -> Batch:
        """Queue the failed rows again (same job ids, a fresh allowance of attempts); the
        completed rows and the cancelled ones are left as they are."""
        batch = await self.get(org_id, batch_id)
        if batch.status == "cancelled":
            raise BatchNotRetryable(batch_id, batch.status)
        retried = await self._store.retry_failed(
            org_id, batch_id, self._max_attempts, self._queue.enqueue_hook
        )
        if retried:
            self._queue.notify()
        return await self.get(org_id, batch_id)

    async def cancel(self, org_id: str, batch_id: str) -> Batch:
        """Cancel the batch's queued and running jobs in one UPDATE; harmless twice."""
        await self.get(org_id, batch_id)
        await self._store.cancel_batch(org_id, batch_id)
        return await self.get(org_id, batch_id)

    # --- live progress ---------------------------------------------------------------------

    async def events(self, org_id: str, batch_id: str) -> AsyncGenerator[Event, None]:
        """Checked up front (404); then ``progress`` at once and whenever the counts change,
        ``row`` for every row that ended (in completion order, from the batch's start),
        heartbeats while nothing changes, and ``done`` once the batch is finished."""
        await self.get(org_id, batch_id)
        return self._follow(org_id, batch_id)

    async def _follow(self, org_id: str, batch_id: str) -> AsyncGenerator[Event, None]:
        last_counts: RequestCounts | None = None
        position: tuple[datetime, int] | None = None
        quiet_since = time.monotonic()
        while True:
            batch = await self.get(org_id, batch_id)
            if batch.counts != last_counts:
                last_counts = batch.counts
                quiet_since = time.monotonic()
                yield Event("progress", _progress(batch))
            rows = await self._store.row_events(batch_id, position, EVENTS_PAGE)
            for row in rows:
                position = row.position
                yield Event(
                    "row",
                    {
                        "row_index": row.row_index,
                        "custom_id": row.custom_id,
                        "job_id": row.job_id,
                        "status": row.status,
                        "error": row.error,
                    },
                )
            if len(rows) == EVENTS_PAGE:
                continue  # more rows ended than one page: read on before sleeping
            if batch.status != "in_progress":
                yield Event("done", _progress(batch))
                return
            if time.monotonic() - quiet_since >= self.heartbeat_s:
                quiet_since = time.monotonic()
                yield Event("heartbeat")
            await asyncio.sleep(self.poll_s)


def _progress(batch: Batch) -> dict[str, Any]:
    return {"id": batch.id, "status": batch.status, "request_counts": asdict(batch.counts)}


def _reports(parsed: list[ParsedRow], problems: list[list[Problem]]) -> list[RowReport]:
    seen: dict[str, int] = {}
    reports = []
    for row, found in zip(parsed, problems, strict=True):
        all_problems = [*row.problems, *found]
        if row.custom_id is not None:
            if row.custom_id in seen:
                all_problems.append(
                    Problem(
                        f"custom_id {row.custom_id!r} is also the custom_id of row "
                        f"{seen[row.custom_id]}; custom_ids are unique in a batch",
                        "duplicate_custom_id",
                        input="custom_id",
                    )
                )
            else:
                seen[row.custom_id] = row.row_index
        reports.append(RowReport(row.row_index, row.custom_id, all_problems))
    return reports
