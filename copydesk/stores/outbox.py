"""Writing webhook events into the outbox, inside the caller's transaction.

One ``INSERT … SELECT`` (an executemany, one parameter set per event) joins each event to
the endpoints of its organisation subscribed to its type: an organisation without
endpoints gets no row. Callers on a hot path check :func:`has_endpoints` first (a
correlated ``EXISTS`` on an indexed column, folded into a query they already run).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, bindparam, cast, exists, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from copydesk.stores.tables import webhook_deliveries, webhook_endpoints


@dataclass(frozen=True)
class Event:
    """One event to announce: to every endpoint of ``org_id`` subscribed to ``event_type``."""

    org_id: str
    event_type: str
    payload: dict[str, Any]
    at: datetime
    id: str = ""

    def params(self) -> dict[str, Any]:
        return {
            "e_event_id": self.id or str(uuid.uuid4()),
            "e_org_id": self.org_id,
            "e_type": self.event_type,
            "e_pattern": f"%,{self.event_type},%",
            "e_payload": self.payload,
            "e_at": self.at,
        }


def has_endpoints(org_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """``EXISTS`` an endpoint of the organisation ``org_id`` (a column of the outer query)."""
    return exists().where(webhook_endpoints.c.org_id == org_id)


def _random_id(dialect: str) -> ColumnElement[str]:
    """A new UUID per inserted row, made by the database."""
    if dialect == "postgresql":
        return cast(func.gen_random_uuid(), String)
    parts = [func.lower(func.hex(func.randomblob(n))) for n in (4, 2, 2, 2, 6)]
    out: ColumnElement[str] = parts[0]
    for part in parts[1:]:
        out = out + literal("-") + part
    return out


def _statement(dialect: str) -> Any:
    e = webhook_endpoints.c
    subscribed = (literal(",") + e.events + literal(",")).like(bindparam("e_pattern"))
    at = bindparam("e_at", type_=webhook_deliveries.c.created_at.type)
    source = select(
        _random_id(dialect),
        bindparam("e_event_id", type_=String),
        e.id,
        e.org_id,
        bindparam("e_type", type_=String),
        bindparam("e_payload", type_=JSON),
        literal("pending"),
        literal(0),
        at,
        at,
    ).where(e.org_id == bindparam("e_org_id"), subscribed)
    d = webhook_deliveries.c
    columns = [
        d.id,
        d.event_id,
        d.endpoint_id,
        d.org_id,
        d.event_type,
        d.payload,
        d.status,
        d.attempts,
        d.next_attempt_at,
        d.created_at,
    ]
    return insert(webhook_deliveries).from_select(columns, source)


async def write_events(conn: AsyncConnection, events: list[Event]) -> None:
    """Add a delivery per event and subscribed endpoint, in ``conn``'s transaction."""
    if not events:
        return
    await conn.execute(_statement(conn.dialect.name), [event.params() for event in events])
