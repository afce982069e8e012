"""Batch completion: a batch is marked ``completed``, and ``batch.completed`` announced,
in the transaction that ends its last active job.

The job store calls :func:`complete_batches` from every statement that can end a batch's
last job (the outcome writer's batch, the reaper failing a job for good, a single job's
cancel) with the ids of the batches whose jobs it just ended; the batch store's read path
calls it too, as a fallback. One conditional ``UPDATE … WHERE status = 'in_progress' AND
NOT EXISTS (active jobs) RETURNING`` decides, so whichever transaction gets there first
marks the batch and writes its one event; the others change nothing.

On PostgreSQL the batch rows are locked first (``FOR UPDATE``, in id order) in a statement
of their own: two transactions ending a batch's last two jobs at once would otherwise each
still see the other's job as active (READ COMMITTED), and neither would mark it. With the
lock the second one waits, and its UPDATE, a new statement, sees the first one's commit.
SQLite runs one writer at a time, so it needs no lock.

The active-jobs check is one probe of ``ix_jobs_batch_active`` (a partial index of the
batch jobs still queued or running), written with literal statuses so both planners can
match the index's predicate.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from copydesk import webhooks
from copydesk.batches import RequestCounts, Usage
from copydesk.stores import outbox
from copydesk.stores.tables import batches, jobs

#: A job still to run, in literal SQL: the predicate of ``ix_jobs_batch_active`` is this
#: and ``batch_id IS NOT NULL`` (literal, so both planners can prove a query implies it).
ACTIVE_SQL = "status IN ('queued', 'running')"


async def complete_batches(
    conn: AsyncConnection, batch_ids: Collection[str], *, at: datetime | None = None
) -> list[str]:
    """Mark every batch of ``batch_ids`` that is in progress and has no queued or running
    job left ``completed`` (``completed_at``: its last job's end) and write its
    ``batch.completed`` event, in ``conn``'s transaction. Returns the ids marked."""
    ids = sorted({b for b in batch_ids if b})
    if not ids:
        return []
    if conn.dialect.name == "postgresql":
        locked = (
            await conn.execute(
                select(batches.c.id)
                .where(batches.c.id.in_(ids), batches.c.status == "in_progress")
                .order_by(batches.c.id)
                .with_for_update()
            )
        ).all()
        ids = [r.id for r in locked]
        if not ids:
            return []
    now = at or datetime.now(UTC)
    active = (
        select(jobs.c.seq)
        .where(jobs.c.batch_id == batches.c.id, text(f"jobs.{ACTIVE_SQL}"))
        .correlate(batches)
    )
    last_end = (
        select(func.max(jobs.c.completed_at))
        .where(jobs.c.batch_id == batches.c.id)
        .correlate(batches)
        .scalar_subquery()
    )
    marked = (
        await conn.execute(
            update(batches)
            .where(
                batches.c.id.in_(ids),
                batches.c.status == "in_progress",
                batches.c.cancelled_at.is_(None),
                ~exists(active),
            )
            .values(status="completed", completed_at=func.coalesce(last_end, now), updated_at=now)
            .returning(
                batches.c.id,
                batches.c.org_id,
                batches.c.agent_id,
                batches.c.created_at,
                batches.c.completed_at,
            )
        )
    ).all()
    if not marked:
        return []
    totals = await _totals(conn, [r.id for r in marked])
    await outbox.write_events(
        conn,
        [
            completed_event(r, *totals.get(r.id, (RequestCounts(), Usage())), aware(r.completed_at))
            for r in marked
        ],
    )
    return [r.id for r in marked]


async def _totals(
    conn: AsyncConnection, batch_ids: list[str]
) -> dict[str, tuple[RequestCounts, Usage]]:
    """Counts and token usage of each batch (one GROUP BY over their jobs)."""
    grouped = (
        await conn.execute(
            select(
                jobs.c.batch_id,
                jobs.c.status,
                func.count(),
                func.coalesce(func.sum(jobs.c.prompt_tokens), 0),
                func.coalesce(func.sum(jobs.c.completion_tokens), 0),
            )
            .where(jobs.c.batch_id.in_(batch_ids))
            .group_by(jobs.c.batch_id, jobs.c.status)
        )
    ).all()
    by_batch: dict[str, dict[str, tuple[int, int, int]]] = {}
    for batch_id, status, count, prompt, completion in grouped:
        by_batch.setdefault(batch_id, {})[status] = (int(count), int(prompt), int(completion))
    out = {}
    for batch_id, by_status in by_batch.items():
        n = {s: v[0] for s, v in by_status.items()}
        counts = RequestCounts(
            total=sum(n.values()),
            in_progress=n.get("queued", 0) + n.get("running", 0),
            completed=n.get("completed", 0),
            failed=n.get("failed", 0),
            cancelled=n.get("cancelled", 0),
        )
        usage = Usage(
            prompt_tokens=sum(v[1] for v in by_status.values()),
            completion_tokens=sum(v[2] for v in by_status.values()),
        )
        out[batch_id] = (counts, usage)
    return out


def aware(value: Any) -> datetime:
    """A UTC datetime; MAX() over a UTC column comes back naive (or a string) on SQLite."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def completed_event(row: Any, counts: RequestCounts, usage: Usage, at: datetime) -> outbox.Event:
    """The ``batch.completed`` webhook event of a batch just marked completed (``row``: its
    ``id``, ``org_id``, ``agent_id`` and ``created_at``)."""
    data = {
        "id": row.id,
        "application_id": row.agent_id,
        "status": "completed",
        "request_counts": {
            "total": counts.total,
            "in_progress": counts.in_progress,
            "completed": counts.completed,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
        },
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        },
        "created_at": aware(row.created_at).isoformat(),
        "completed_at": at.isoformat(),
    }
    return outbox.Event(row.org_id, "batch.completed", webhooks.batch_event(data, at), at)
