"""``BatchStore`` over the same engine (and transactions) as :class:`SQLStore`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from copydesk.batches import (
    Batch,
    BatchJob,
    BatchJobQuery,
    NewBatch,
    NewRow,
    RequestCounts,
    ResultRow,
    RowEvent,
    Usage,
    batch_status,
)
from copydesk.jobs import ACTIVE, CANCELLED_ERROR
from copydesk.store import EnqueueHook, Job
from copydesk.stores import outbox
from copydesk.stores.completion import aware, completed_event
from copydesk.stores.sql import (
    SQLJobStore,
    _job,
    _job_from_dict,
    _jobs,
    _SQLPart,
    count_and_page,
    insert_jobs,
    queued_row,
    utcnow,
)
from copydesk.stores.sql import (
    requeued as requeued_values,
)
from copydesk.stores.tables import batches, jobs

#: Rows per INSERT (executemany) and per enqueue call when a batch is stored.
INSERT_CHUNK = 1000


class SQLBatchStore(_SQLPart):
    async def create_batch(
        self, batch: NewBatch, rows: list[NewRow], enqueue: EnqueueHook | None = None
    ) -> Batch:
        now = utcnow()
        async with self._tx() as conn:
            await conn.execute(
                insert(batches).values(
                    id=batch.id,
                    org_id=batch.org_id,
                    agent_id=batch.agent_id,
                    agent_version=batch.agent_version,
                    status="in_progress",
                    total=len(rows),
                    priority=batch.priority,
                    created_at=now,
                    updated_at=now,
                )
            )
            rank = await SQLJobStore(self._store)._rank_base(conn, batch.org_id)
            for start in range(0, len(rows), INSERT_CHUNK):
                values = []
                for row in rows[start : start + INSERT_CHUNK]:
                    rank += 1
                    values.append(
                        {
                            **queued_row(row.job, rank, now),
                            "batch_id": batch.id,
                            "row_index": row.row_index,
                            "custom_id": row.custom_id,
                        }
                    )
                await insert_jobs(conn, values)
                if enqueue is not None:
                    await enqueue(conn, [_job_from_dict(v) for v in values])
        total = len(rows)
        return Batch(
            id=batch.id,
            org_id=batch.org_id,
            agent_id=batch.agent_id,
            agent_version=batch.agent_version,
            status="in_progress" if total else "completed",
            total=total,
            priority=batch.priority,
            created_at=now,
            updated_at=now,
            counts=RequestCounts(total=total, in_progress=total),
        )

    async def get_batch(self, org_id: str, batch_id: str) -> Batch | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(batches).where(batches.c.org_id == org_id, batches.c.id == batch_id)
                )
            ).first()
            if row is None:
                return None
            return await self._with_counts(conn, row)

    async def _with_counts(self, conn: AsyncConnection, row: Row[Any]) -> Batch:
        """The batch with its counts (one GROUP BY over its jobs); a batch found with
        nothing active is marked completed (once: the first reader sets completed_at)."""
        grouped = (
            await conn.execute(
                select(
                    jobs.c.status,
                    func.count(),
                    func.coalesce(func.sum(jobs.c.prompt_tokens), 0),
                    func.coalesce(func.sum(jobs.c.completion_tokens), 0),
                    func.max(jobs.c.completed_at),
                )
                .where(jobs.c.batch_id == row.id)
                .group_by(jobs.c.status)
            )
        ).all()
        by_status = {g[0]: int(g[1]) for g in grouped}
        counts = RequestCounts(
            total=sum(by_status.values()),
            in_progress=sum(by_status.get(s, 0) for s in ACTIVE),
            completed=by_status.get("completed", 0),
            failed=by_status.get("failed", 0),
            cancelled=by_status.get("cancelled", 0),
        )
        usage = Usage(
            prompt_tokens=sum(int(g[2]) for g in grouped),
            completion_tokens=sum(int(g[3]) for g in grouped),
        )
        status = batch_status(counts, row.cancelled_at is not None)
        completed_at = row.completed_at
        if status == "completed" and row.status != "completed":
            ended = [g[4] for g in grouped if g[4] is not None]
            completed_at = aware(max(ended)) if ended else utcnow()
            marked = await conn.execute(
                update(batches)
                .where(batches.c.seq == row.seq, batches.c.status == "in_progress")
                .values(status="completed", completed_at=completed_at, updated_at=utcnow())
            )
            if marked.rowcount == 1:  # once: in the transaction that marks it completed
                await outbox.write_events(conn, [completed_event(row, counts, usage, completed_at)])
        return Batch(
            id=row.id,
            org_id=row.org_id,
            agent_id=row.agent_id,
            agent_version=row.agent_version,
            status=status,
            total=row.total,
            priority=row.priority,
            created_at=row.created_at,
            updated_at=row.updated_at,
            completed_at=completed_at if status == "completed" else row.cancelled_at,
            cancelled_at=row.cancelled_at,
            counts=counts,
            usage=usage,
        )

    async def list_batches(
        self, org_id: str, agent_id: str | None, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        conditions: list[Any] = [batches.c.org_id == org_id]
        if agent_id is not None:
            conditions.append(batches.c.agent_id == agent_id)
        async with self._tx() as conn:
            if after is not None:
                seq = (
                    await conn.execute(
                        select(batches.c.seq).where(
                            batches.c.org_id == org_id, batches.c.id == after
                        )
                    )
                ).scalar_one_or_none()
                if seq is None:
                    return [], False
                conditions.append(batches.c.seq < seq)
            rows = (
                await conn.execute(
                    select(batches)
                    .where(*conditions)
                    .order_by(batches.c.seq.desc())
                    .limit(limit + 1)
                )
            ).all()
            items = [await self._with_counts(conn, r) for r in rows[:limit]]
        return items, len(rows) > limit

    async def list_batch_jobs(
        self, org_id: str, batch_id: str, query: BatchJobQuery
    ) -> tuple[list[BatchJob], int]:
        conditions: list[Any] = [jobs.c.batch_id == batch_id, jobs.c.org_id == org_id]
        if query.statuses:
            conditions.append(jobs.c.status.in_(query.statuses))
        if query.custom_id is not None:
            conditions.append(jobs.c.custom_id == query.custom_id)
        async with self._read() as conn:
            rows, total = await count_and_page(
                conn, conditions, jobs.c.row_index, query.offset, query.limit
            )
        return [_batch_job(r) for r in rows], total

    async def result_rows(self, batch_id: str, after_row: int, limit: int) -> list[ResultRow]:
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(
                        jobs.c.row_index,
                        jobs.c.custom_id,
                        jobs.c.inputs,
                        jobs.c.status,
                        jobs.c.result_title,
                        jobs.c.result_suggestion,
                        jobs.c.error,
                    )
                    .where(jobs.c.batch_id == batch_id, jobs.c.row_index > after_row)
                    .order_by(jobs.c.row_index)
                    .limit(limit)
                )
            ).all()
        return [
            ResultRow(
                row_index=r.row_index,
                custom_id=r.custom_id,
                inputs=list(r.inputs),
                status=r.status,
                title=r.result_title,
                suggestion=r.result_suggestion,
                error=r.error if r.status in ("failed", "cancelled") else None,
            )
            for r in rows
        ]

    async def row_events(
        self, batch_id: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[RowEvent]:
        conditions: list[Any] = [
            jobs.c.batch_id == batch_id,
            jobs.c.completed_at.is_not(None),
            jobs.c.status.not_in(ACTIVE),
        ]
        if after is not None:
            at, seq = after
            conditions.append(
                or_(jobs.c.completed_at > at, and_(jobs.c.completed_at == at, jobs.c.seq > seq))
            )
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(
                        jobs.c.seq,
                        jobs.c.id,
                        jobs.c.row_index,
                        jobs.c.custom_id,
                        jobs.c.status,
                        jobs.c.error,
                        jobs.c.completed_at,
                    )
                    .where(*conditions)
                    .order_by(jobs.c.completed_at, jobs.c.seq)
                    .limit(limit)
                )
            ).all()
        return [
            RowEvent(
                row_index=r.row_index,
                custom_id=r.custom_id,
                job_id=r.id,
                status=r.status,
                error=r.error if r.status != "completed" else None,
                position=(r.completed_at, r.seq),
            )
            for r in rows
        ]

    async def retry_failed(
        self, org_id: str, batch_id: str, extra_attempts: int, enqueue: EnqueueHook | None = None
    ) -> int:
        """:meth:`SQLJobStore.retry_job` for every failed job of the batch, in one UPDATE
        (the same values: queued again under the same id, a fresh allowance of attempts)."""
        now = utcnow()
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.batch_id == batch_id,
                        jobs.c.org_id == org_id,
                        jobs.c.status == "failed",
                    )
                    .values(**requeued_values(now, jobs.c.attempts + extra_attempts))
                    .returning(*jobs.c)
                )
            ).all()
            if rows:
                await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch_id, batches.c.cancelled_at.is_(None))
                    .values(status="in_progress", completed_at=None, updated_at=now)
                )
                if enqueue is not None:
                    requeued: list[Job] = _jobs(rows)
                    for start in range(0, len(requeued), INSERT_CHUNK):
                        await enqueue(conn, requeued[start : start + INSERT_CHUNK])
        return len(rows)

    async def cancel_batch(self, org_id: str, batch_id: str) -> int:
        now = utcnow()
        async with self._tx() as conn:
            result = await conn.execute(
                update(jobs)
                .where(
                    jobs.c.batch_id == batch_id,
                    jobs.c.org_id == org_id,
                    jobs.c.status.in_(ACTIVE),
                )
                .values(
                    status="cancelled",
                    completed_at=now,
                    updated_at=now,
                    error=CANCELLED_ERROR,
                    error_class="cancelled",
                    # no renewal, release, reaper or outcome touches a cancelled job again
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            # The jobs' rows before the batch's: the order in which an outcome's
            # transaction locks them (stores/completion.py), so the two never deadlock.
            await conn.execute(
                update(batches)
                .where(
                    batches.c.org_id == org_id,
                    batches.c.id == batch_id,
                    batches.c.cancelled_at.is_(None),
                )
                .values(status="cancelled", cancelled_at=now, updated_at=now)
            )
        return int(result.rowcount)


def _batch_job(row: Row[Any]) -> BatchJob:
    m = row._mapping
    return BatchJob(
        job=_job(row), batch_id=m["batch_id"], row_index=m["row_index"], custom_id=m["custom_id"]
    )
