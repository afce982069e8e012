"""``IdempotencyStore`` over the same engine (and transactions) as :class:`SQLStore`.

The winner among concurrent duplicates is decided by the primary key (org_id, key): one
``INSERT … ON CONFLICT DO UPDATE … WHERE <the held key may be taken> RETURNING`` on both
dialects, so exactly one request holds a key at a time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row

from copydesk.store import IdempotencyRecord
from copydesk.stores.sql import _SQLPart, utcnow
from copydesk.stores.tables import idempotency_keys as keys

#: Claiming retries when the holder disappears between the insert and the read.
_CLAIM_TRIES = 5


class SQLIdempotencyStore(_SQLPart):
    async def claim_key(
        self,
        org_id: str,
        key: str,
        fingerprint: str | None,
        owner: str,
        lease_s: float,
        ttl_s: float,
    ) -> IdempotencyRecord | None:
        for _ in range(_CLAIM_TRIES):
            now = utcnow()
            values = {
                "org_id": org_id,
                "key": key,
                "fingerprint": fingerprint,
                "state": "in_flight",
                "status_code": None,
                "response": None,
                "object_id": None,
                "lease_owner": owner,
                "lease_expires_at": now + timedelta(seconds=lease_s),
                "created_at": now,
                "expires_at": now + timedelta(seconds=ttl_s),
            }
            dialect_insert: Any = pg_insert if self.dialect == "postgresql" else sqlite_insert
            stmt = dialect_insert(keys).values(**values)
            # Taken over in place: a key past its expiry (cleaned lazily), or one still in
            # flight whose holder stopped renewing its lease (a crashed request).
            takeable = or_(
                keys.c.expires_at <= now,
                and_(keys.c.state == "in_flight", keys.c.lease_expires_at <= now),
            )
            claim = stmt.on_conflict_do_update(
                index_elements=[keys.c.org_id, keys.c.key],
                set_={k: stmt.excluded[k] for k in values if k not in ("org_id", "key")},
                where=takeable,
            ).returning(keys.c.lease_owner)
            async with self._tx() as conn:
                won = (await conn.execute(claim)).first()
                if won is not None:
                    return None
                row = (
                    await conn.execute(
                        select(keys).where(keys.c.org_id == org_id, keys.c.key == key)
                    )
                ).first()
            if row is not None:
                return _record(row)
        raise RuntimeError(f"idempotency key {key!r} could not be claimed or read")

    async def get_key(self, org_id: str, key: str) -> IdempotencyRecord | None:
        async with self._tx() as conn:
            row = (
                await conn.execute(select(keys).where(keys.c.org_id == org_id, keys.c.key == key))
            ).first()
        return _record(row) if row is not None else None

    def _held(self, org_id: str, key: str, owner: str) -> Any:
        return and_(
            keys.c.org_id == org_id,
            keys.c.key == key,
            keys.c.state == "in_flight",
            keys.c.lease_owner == owner,
        )

    async def renew_key(self, org_id: str, key: str, owner: str, lease_s: float) -> bool:
        async with self._tx() as conn:
            result = await conn.execute(
                update(keys)
                .where(self._held(org_id, key, owner))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
            )
        return bool(result.rowcount)

    async def complete_key(
        self,
        org_id: str,
        key: str,
        owner: str,
        fingerprint: str,
        status_code: int,
        response: Any,
        object_id: str | None,
    ) -> bool:
        async with self._tx() as conn:
            result = await conn.execute(
                update(keys)
                .where(self._held(org_id, key, owner))
                .values(
                    state="done",
                    fingerprint=fingerprint,
                    status_code=status_code,
                    response=response,
                    object_id=object_id,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
        return bool(result.rowcount)

    async def release_key(self, org_id: str, key: str, owner: str) -> None:
        async with self._tx() as conn:
            await conn.execute(delete(keys).where(self._held(org_id, key, owner)))

    async def purge_keys(self, limit: int = 10_000) -> int:
        expired = (
            select(keys.c.org_id, keys.c.key).where(keys.c.expires_at <= utcnow()).limit(limit)
        )
        async with self._tx() as conn:
            result = await conn.execute(
                delete(keys).where(tuple_(keys.c.org_id, keys.c.key).in_(expired))
            )
        return int(result.rowcount or 0)


def _record(row: Row[Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        org_id=row.org_id,
        key=row.key,
        fingerprint=row.fingerprint,
        state=row.state,
        created_at=row.created_at,
        expires_at=row.expires_at,
        lease_expires_at=row.lease_expires_at,
        status_code=row.status_code,
        response=row.response,
        object_id=row.object_id,
    )
