"""Provider concurrency shared by every worker process: slots kept as advisory locks.

A provider with ``max_concurrency = N`` has N slots, the session-level advisory locks
``(key(provider), 0)`` … ``(key(provider), N - 1)`` (the two-int form; ``key`` is a CRC-32
of the provider's name). A worker process holds the slots it uses on **one** connection
of its own, so across every worker no more than N are held, and a worker that dies
(its connection closes) gives its slots back with it.

The connection is only used when this process needs more slots or has some to spare:

- a call that ends while a local call of the same provider waits for a slot hands its
  slot over in memory (no query: a saturated worker costs no query per job);
- waiters beyond the slots held are served by one query taking up to that many free
  slots, ``pg_try_advisory_lock`` in a ``WHERE`` under a ``LIMIT`` (only the rows returned
  are evaluated, so only they are locked); when it returns fewer than asked (other
  processes hold the rest), it is repeated every ``retry_s`` while some still wait;
- slots nobody here waits for are unlocked at once, in one query.

If the connection is lost, the slots in use are locked again on the new one; one another
process took meanwhile is dropped when its call ends instead of being handed on (the
limit may be exceeded by those calls, once, while they finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from dataclasses import dataclass, field

import asyncpg

from copydesk.flow import SlotWaiters

log = logging.getLogger("copydesk.limiters.slots")

#: Take up to $4 of the slots 0..$2-1 not held here ($3), each with a try-lock. The
#: CASE keeps a slot held here from being locked twice (session locks stack).
_ACQUIRE = """
SELECT s FROM generate_series(0, $2::int - 1) AS s
WHERE CASE WHEN s = ANY($3::int[]) THEN false ELSE pg_try_advisory_lock($1::int, s) END
LIMIT $4::int
"""
_RELOCK = "SELECT s FROM unnest($2::int[]) AS s WHERE pg_try_advisory_lock($1::int, s)"
_RELEASE = "SELECT s FROM unnest($2::int[]) AS s WHERE NOT pg_advisory_unlock($1::int, s)"
_ERROR_BACKOFF_S = 1.0


def slot_key(provider: str, namespace: str = "") -> int:
    """The advisory lock's first key (a signed int4) for one provider's slots."""
    value = zlib.crc32(f"copydesk-slots:{namespace}:{provider}".encode())
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass
class _Pool:
    key: int
    limit: int
    #: Locked on our connection: in use here, or free.
    held: set[int] = field(default_factory=set)
    free: list[int] = field(default_factory=list)
    waiters: SlotWaiters = field(default_factory=SlotWaiters)
    #: In use, but no longer locked (the connection was lost and another took it).
    lost: set[int] = field(default_factory=set)


class PostgresSlots:
    """The :class:`~copydesk.flow.Slots` of one worker process, on PostgreSQL."""

    def __init__(
        self,
        dsn: str,
        limits: dict[str, int],
        *,
        namespace: str = "",
        retry_s: float = 0.02,
    ) -> None:
        self._dsn = dsn
        self._pools = {name: _Pool(slot_key(name, namespace), n) for name, n in limits.items()}
        self._retry_s = retry_s
        self._conn: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.queries = 0  # statements run (tests and benchmarks read it)

    # --- the port ----------------------------------------------------------------------

    async def acquire(self, provider: str) -> int:
        pool = self._pools.get(provider)
        if pool is None:
            return -1  # not a configured provider: no bound
        if self._closed:
            raise RuntimeError("provider slots are closed")
        if pool.free:
            return pool.free.pop()
        self._kick()  # runs once this waits: the waiter is queued by then
        return await pool.waiters.wait(lambda slot: self.release(provider, slot))

    def release(self, provider: str, slot: int) -> None:
        pool = self._pools.get(provider)
        if pool is None or slot < 0:
            return
        if slot in pool.lost:
            pool.lost.discard(slot)
            pool.held.discard(slot)
            self._kick()
            return
        if pool.waiters.hand_over(slot):
            return  # local hand-over: no query
        pool.free.append(slot)
        self._kick()

    def warm(self) -> None:
        self._kick()  # connects, so the first call does not wait for it

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pool in self._pools.values():
            pool.waiters.fail(RuntimeError("provider slots are closed"))
            pool.held.clear()
            pool.free.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()  # unlocks every slot held
            self._conn = None

    # --- introspection (tests, benchmarks) -----------------------------------------------

    def held(self, provider: str) -> int:
        """Slots of ``provider`` this process holds (in use or free)."""
        pool = self._pools.get(provider)
        return len(pool.held) if pool else 0

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend holding this process's slots, if connected."""
        if self._conn is None or self._conn.is_closed():
            return None
        return int(self._conn.get_server_pid())

    # --- the connection's loop -----------------------------------------------------------

    def _kick(self) -> None:
        if self._closed:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="provider-slots")
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                short = await self._sync()
                pause = self._retry_s
            except Exception as exc:
                log.warning("provider slots: %s: %s (retrying)", type(exc).__name__, exc)
                await self._drop_connection()
                short, pause = True, _ERROR_BACKOFF_S
            if short:
                await asyncio.sleep(pause)
                self._wake.set()

    async def _sync(self) -> bool:
        """Unlock the slots nobody here waits for; take free ones for the waiters. True
        when some still wait and more slots exist than this process holds."""
        conn = await self._connection()
        short = False
        for name, pool in self._pools.items():
            if pool.free and not pool.waiters:
                spare, pool.free = pool.free, []
                pool.held.difference_update(spare)
                self.queries += 1
                unheld = await conn.fetch(_RELEASE, pool.key, spare)
                if unheld:
                    log.warning("provider %s: slots %s were not locked", name, unheld)
            want = min(len(pool.waiters), pool.limit - len(pool.held))
            if want > 0:
                self.queries += 1
                rows = await conn.fetch(_ACQUIRE, pool.key, pool.limit, sorted(pool.held), want)
                got = [int(row[0]) for row in rows]
                pool.held.update(got)
                for slot in got:
                    self.release(name, slot)
                # Fewer than asked: other processes hold the rest; ask again after a
                # pause. (Waiters that came during the query woke the loop already.)
                if len(got) < want:
                    short = True
        return short

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._conn is not None:
            await self._drop_connection()
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "copydesk-slots"}
        )
        self.queries += 1
        for name, pool in self._pools.items():
            # Our locks went with the old connection: the free ones are forgotten, the
            # ones in use are locked again where no other process took them meanwhile.
            in_use = sorted(pool.held - pool.lost)
            if not in_use:
                continue
            rows = await conn.fetch(_RELOCK, pool.key, in_use)
            taken = set(in_use) - {int(row[0]) for row in rows}
            if taken:
                log.warning(
                    "provider %s: %d slot(s) in use were taken by another process while "
                    "the connection was lost; they are dropped when their calls end",
                    name,
                    len(taken),
                )
                pool.lost |= taken
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        for pool in self._pools.values():
            pool.held.difference_update(pool.free)
            pool.free.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
