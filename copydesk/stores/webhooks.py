"""``WebhookStore`` over SQLAlchemy: endpoints, the delivery log, claiming due deliveries.

Events are written into the outbox by the state changes themselves (see
:mod:`copydesk.stores.outbox`); this module reads and moves them along.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import Row

from copydesk.stores.sql import _SQLPart, utcnow
from copydesk.stores.tables import webhook_deliveries, webhook_endpoints
from copydesk.webhooks import Attempted, Delivery, DueDelivery, Endpoint, NewEndpoint

_FINISH = (
    update(webhook_deliveries)
    .where(
        webhook_deliveries.c.id == bindparam("b_id"),
        webhook_deliveries.c.status == "pending",
    )
    .values(
        status=bindparam("b_status"),
        last_status=bindparam("b_code"),
        last_error=bindparam("b_error"),
        next_attempt_at=bindparam("b_next"),
        delivered_at=bindparam("b_delivered_at"),
        lease_expires_at=None,
    )
)


class SQLWebhookStore(_SQLPart):
    async def create_endpoint(self, new: NewEndpoint) -> Endpoint:
        now = utcnow()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    insert(webhook_endpoints)
                    .values(
                        id=new.id,
                        org_id=new.org_id,
                        url=new.url,
                        events=",".join(new.events),
                        description=new.description,
                        secret=new.secret,
                        created_at=now,
                    )
                    .returning(*webhook_endpoints.c)
                )
            ).one()
        return _endpoint(row)

    async def list_endpoints(self, org_id: str) -> list[Endpoint]:
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(webhook_endpoints)
                    .where(webhook_endpoints.c.org_id == org_id)
                    .order_by(webhook_endpoints.c.seq)
                )
            ).all()
        return [_endpoint(r) for r in rows]

    async def get_endpoint(self, org_id: str, endpoint_id: str) -> Endpoint | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(webhook_endpoints).where(
                        webhook_endpoints.c.org_id == org_id,
                        webhook_endpoints.c.id == endpoint_id,
                    )
                )
            ).first()
        return _endpoint(row) if row else None

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        async with self._tx() as conn:
            found = (
                await conn.execute(
                    select(webhook_endpoints.c.id).where(
                        webhook_endpoints.c.org_id == org_id,
                        webhook_endpoints.c.id == endpoint_id,
                    )
                )
            ).first()
            if found is None:
                return False
            await conn.execute(
                delete(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
            )
            await conn.execute(
                delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
            )
        return True

    async def list_deliveries(self, org_id: str, endpoint_id: str, limit: int) -> list[Delivery]:
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(webhook_deliveries)
                    .where(
                        webhook_deliveries.c.org_id == org_id,
                        webhook_deliveries.c.endpoint_id == endpoint_id,
                    )
                    .order_by(webhook_deliveries.c.seq.desc())
                    .limit(limit)
                )
            ).all()
        return [_delivery(r) for r in rows]

    async def redeliver(
        self, org_id: str, delivery_id: str, extra_attempts: int
    ) -> Delivery | None:
        now = utcnow()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    update(webhook_deliveries)
                    .where(
                        webhook_deliveries.c.org_id == org_id,
                        webhook_deliveries.c.id == delivery_id,
                    )
                    .values(
                        status="pending",
                        next_attempt_at=now,
                        lease_expires_at=None,
                        max_attempts=webhook_deliveries.c.attempts + extra_attempts,
                    )
                    .returning(*webhook_deliveries.c)
                )
            ).first()
        return _delivery(row) if row else None

    async def claim_deliveries(self, limit: int, lease_s: float) -> list[DueDelivery]:
        if limit <= 0:
            return []
        now = utcnow()
        d = webhook_deliveries.c
        due = [
            d.status == "pending",
            d.next_attempt_at <= now,
            or_(d.lease_expires_at.is_(None), d.lease_expires_at < now),
        ]
        pick = select(d.seq).where(*due).order_by(d.next_attempt_at).limit(limit)
        if self.dialect == "postgresql":
            picked: Any = select(pick.with_for_update(skip_locked=True).cte("picked").c.seq)
        else:
            picked = pick.scalar_subquery()
        async with self._tx() as conn:
            # Idle workers poll: a plain read first, so an empty outbox takes no write lock.
            if (await conn.execute(select(d.seq).where(*due).limit(1))).first() is None:
                return []
            rows = (
                await conn.execute(
                    update(webhook_deliveries)
                    .where(d.seq.in_(picked), d.status == "pending")
                    .values(
                        lease_expires_at=now + timedelta(seconds=lease_s),
                        attempts=d.attempts + 1,
                    )
                    .returning(*webhook_deliveries.c)
                )
            ).all()
            if not rows:
                return []
            e = webhook_endpoints.c
            targets = {
                r.id: (r.url, r.secret)
                for r in await conn.execute(
                    select(e.id, e.url, e.secret).where(e.id.in_({r.endpoint_id for r in rows}))
                )
            }
        claimed = [
            DueDelivery(_delivery(r), *targets[r.endpoint_id])
            for r in rows
            if r.endpoint_id in targets
        ]
        claimed.sort(key=lambda due: due.delivery.next_attempt_at or now)
        return claimed

    async def finish_deliveries(self, attempts: list[Attempted]) -> None:
        if not attempts:
            return
        params = [
            {
                "b_id": a.delivery_id,
                "b_status": a.status,
                "b_code": a.status_code,
                "b_error": a.error,
                "b_next": a.next_attempt_at,
                "b_delivered_at": a.at if a.status == "delivered" else None,
            }
            for a in attempts
        ]
        async with self._tx() as conn:
            await conn.execute(_FINISH, params)


def _endpoint(row: Row[Any]) -> Endpoint:
    m = row._mapping
    return Endpoint(
        id=m["id"],
        org_id=m["org_id"],
        url=m["url"],
        events=[e for e in m["events"].split(",") if e],
        description=m["description"],
        secret=m["secret"],
        created_at=m["created_at"],
    )


def _delivery(row: Row[Any]) -> Delivery:
    m = row._mapping
    return Delivery(
        id=m["id"],
        event_id=m["event_id"],
        endpoint_id=m["endpoint_id"],
        org_id=m["org_id"],
        event_type=m["event_type"],
        payload=m["payload"],
        status=m["status"],
        attempts=m["attempts"],
        created_at=m["created_at"],
        next_attempt_at=m["next_attempt_at"],
        last_status=m["last_status"],
        last_error=m["last_error"],
        delivered_at=m["delivered_at"],
        max_attempts=m["max_attempts"],
    )
