"""Flow control: requests and tokens per minute per provider, shared by every worker.

The ``FlowControl`` port hands out permits. Concurrency (calls in flight) is bounded by
the dispatch engine; this port bounds the *rate*. Windows are sliding (exact): in any
60 s no more than the configured requests or tokens start.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

WINDOW_S = 60.0
#: A permit is recorded a moment before its request reaches the provider (the event loop,
#: a connection), and that moment varies; the provider counts arrivals. Permits are kept
#: this much longer than the window, so no 60 s of arrivals holds more than the limit.
SEND_MARGIN_S = 0.5
HELD_S = WINDOW_S + SEND_MARGIN_S


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None


@dataclass(frozen=True)
class Permit:
    """Leave to start one request; ``ref`` lets the implementation find its record."""

    provider: str
    tokens: int
    ref: object = None


class FlowControl(Protocol):
    async def acquire(self, provider: str, tokens: int) -> Permit:
        """Wait until one request of ``tokens`` estimated tokens may start now."""
        ...

    async def settle(self, permit: Permit, actual_tokens: int) -> None:
        """Correct the token count of a finished request (estimate -> actual)."""
        ...

    async def close(self) -> None: ...


def window_wait(
    events: deque[tuple[float, int]],
    now: float,
    requests: int | None,
    tokens: int | None,
    cost: int,
    held_s: float = HELD_S,
) -> float:
    """Seconds until a request of ``cost`` tokens fits the window (0: it fits now).
    Each permit counts for ``held_s`` seconds after it was given."""
    while events and events[0][0] <= now - held_s:
        events.popleft()
    waits = [0.0]
    if requests is not None and len(events) >= requests:
        waits.append(events[len(events) - requests][0] + held_s - now)
    if tokens is not None:
        used = sum(t for _, t in events)
        if used + cost > tokens and events:
            # Drop the oldest events until the cost fits; wait for the last one dropped.
            need, freed = used + cost - tokens, 0
            for at, t in events:
                freed += t
                if freed >= need:
                    waits.append(at + held_s - now)
                    break
    return max(waits)


class MemoryFlowControl:
    """Exact sliding windows in this process (the embedded, one-process deployment).

    ``clock`` and ``sleep`` (seconds, monotonic) can be replaced together, as tests do.
    """

    def __init__(
        self,
        limits: dict[str, Limits],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        held_s: float = HELD_S,
    ) -> None:
        self._held_s = held_s
        self._limits = limits
        self._clock = clock
        self._sleep = sleep
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, provider: str, tokens: int) -> Permit:
        limits = self._limits.get(provider)
        if limits is None or limits.unlimited:
            return Permit(provider, tokens)
        lock = self._locks.setdefault(provider, asyncio.Lock())
        events = self._events.setdefault(provider, deque())
        async with lock:  # one waiter at a time keeps the order fair
            cost = min(tokens, limits.tokens_per_minute or tokens)
            while True:
                now = self._clock()
                wait = window_wait(
                    events,
                    now,
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                    cost,
                    self._held_s,
                )
                if wait <= 0:
                    events.append((now, cost))
                    return Permit(provider, cost, now)
                await self._sleep(wait)

    async def settle(self, permit: Permit, actual_tokens: int) -> None:
        events = self._events.get(permit.provider)
        if not events or permit.ref is None or permit.tokens == actual_tokens:
            return
        for index in range(len(events) - 1, -1, -1):
            at, t = events[index]
            if at == permit.ref and t == permit.tokens:
                events[index] = (at, max(0, actual_tokens))
                return

    async def close(self) -> None:
        return None


class Slots(Protocol):
    """Provider concurrency: at most ``max_concurrency`` calls in flight to a provider.

    Taken right before the provider call and given back as soon as it returns, handed
    straight to a job already waiting for one. Both engines pick jobs ahead of the limit
    (``provider_prefetch``) so a freed slot is refilled at once: the embedded engine
    keeps its slots in this process (:class:`LocalSlots`), PgQueuer's workers share
    theirs in PostgreSQL (:mod:`copydesk.limiters.slots`).
    """

    async def acquire(self, provider: str) -> int:
        """Wait for a free slot of ``provider``; its number, for :meth:`release`."""
        ...

    def release(self, provider: str, slot: int) -> None:
        """Give the slot back (never waits: safe in ``finally`` while cancelled)."""
        ...

    def warm(self) -> None:
        """Get ready in the background (a worker starts: connect before the first call)."""
        ...

    async def close(self) -> None: ...


class NoSlots:
    """No bound here: the engine's dispatch holds concurrency."""

    async def acquire(self, provider: str) -> int:
        return -1

    def release(self, provider: str, slot: int) -> None:
        return None

    def warm(self) -> None:
        return None

    async def close(self) -> None:
        return None


class SlotWaiters:
    """Jobs waiting for a provider slot, longest first: what both ``Slots`` adapters hand
    a returning call's slot to."""

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[int]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    async def wait(self, give_back: Callable[[int], None]) -> int:
        """Wait to be handed a slot. Cancelled after one was handed over (but before
        this waiter ran), the slot goes to ``give_back`` instead of being lost."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                give_back(waiter.result())
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
            raise

    def hand_over(self, slot: int) -> bool:
        """Give ``slot`` to the longest waiter still waiting; False when none is."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return True
        return False

    def fail(self, exc: BaseException) -> None:
        """End every wait with ``exc`` (the slots are closing)."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


class LocalSlots:
    """Provider slots of one process: a freed slot goes to the longest waiter, in memory.

    The embedded engine claims up to ``max_concurrency + prefetch`` jobs; this keeps
    the calls in flight at ``max_concurrency`` while the jobs picked ahead wait, ready
    to send, for the first slot a returning call frees.
    """

    def __init__(self, limits: dict[str, int]) -> None:
        self._limits = dict(limits)
        self._free = {name: list(range(n)) for name, n in limits.items()}
        self._waiters = {name: SlotWaiters() for name in limits}

    async def acquire(self, provider: str) -> int:
        free = self._free.get(provider)
        if free is None:
            return -1  # not a configured provider: no bound
        waiters = self._waiters[provider]
        if free and not waiters:
            return free.pop()
        return await waiters.wait(lambda slot: self.release(provider, slot))

    def release(self, provider: str, slot: int) -> None:
        waiters = self._waiters.get(provider)
        if waiters is None or slot < 0:
            return
        if not waiters.hand_over(slot):
            self._free[provider].append(slot)

    def in_use(self, provider: str) -> int:
        """Slots of ``provider`` taken now (tests read it)."""
        return self._limits.get(provider, 0) - len(self._free.get(provider, []))

    def warm(self) -> None:
        return None

    async def close(self) -> None:
        for waiters in self._waiters.values():
            waiters.fail(RuntimeError("provider slots are closed"))
