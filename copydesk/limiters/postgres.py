"""Flow control shared by every worker process, kept in PostgreSQL itself.

Each provider with a limit has a sliding one-minute log in ``rate_events``. Acquiring
takes a transaction-scoped advisory lock for the provider (so concurrent workers on any
host queue up), drops events older than a minute, and either records the new request or
learns how long to wait. Exact: no 60 s window ever holds more than the limits.
"""

from __future__ import annotations

import asyncio
import zlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, text, update

from copydesk.flow import HELD_S, Limits, Permit
from copydesk.stores.sql import SQLStore
from copydesk.stores.tables import rate_events

_LOCK_SPACE = 0x0C0D


class PostgresFlowControl:
    def __init__(self, store: SQLStore, limits: dict[str, Limits]) -> None:
        self._store = store
        self._limits = limits

    async def acquire(self, provider: str, tokens: int) -> Permit:
        limits = self._limits.get(provider)
        if limits is None or limits.unlimited:
            return Permit(provider, tokens)
        cost = min(tokens, limits.tokens_per_minute or tokens)
        while True:
            wait, event_id = await self._try(provider, limits, cost)
            if event_id is not None:
                return Permit(provider, cost, event_id)
            await asyncio.sleep(wait)

    async def _try(self, provider: str, limits: Limits, cost: int) -> tuple[float, int | None]:
        key = zlib.crc32(provider.encode()) & 0x7FFFFFFF
        async with self._store.engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": _LOCK_SPACE, "key": key},
            )
            now = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
            assert isinstance(now, datetime)
            horizon = now - timedelta(seconds=HELD_S)
            await conn.execute(
                delete(rate_events).where(
                    rate_events.c.provider == provider, rate_events.c.at <= horizon
                )
            )
            rows = (
                await conn.execute(
                    select(rate_events.c.at, rate_events.c.tokens)
                    .where(rate_events.c.provider == provider)
                    .order_by(rate_events.c.at)
                )
            ).all()
            waits = [0.0]
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            if rpm is not None and len(rows) >= rpm:
                waits.append((rows[len(rows) - rpm].at - horizon).total_seconds())
            if tpm is not None:
                used = sum(r.tokens for r in rows)
                if used + cost > tpm:
                    need, freed = used + cost - tpm, 0
                    for r in rows:
                        freed += r.tokens
                        if freed >= need:
                            waits.append((r.at - horizon).total_seconds())
                            break
            wait = max(waits)
            if wait > 0:
                return wait + 0.001, None
            event_id = (
                await conn.execute(
                    insert(rate_events)
                    .values(provider=provider, at=now.astimezone(UTC), tokens=cost)
                    .returning(rate_events.c.id)
                )
            ).scalar_one()
            return 0.0, int(event_id)

    async def settle(self, permit: Permit, actual_tokens: int) -> None:
        if permit.ref is None or permit.tokens == actual_tokens:
            return
        async with self._store.engine.begin() as conn:
            await conn.execute(
                update(rate_events)
                .where(rate_events.c.id == permit.ref)
                .values(tokens=max(0, actual_tokens))
            )

    async def close(self) -> None:
        return None
