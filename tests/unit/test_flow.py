"""Flow control in one process: the sliding-window arithmetic and ``MemoryFlowControl``.

``MemoryFlowControl`` runs on a fake clock here (its ``clock`` and ``sleep`` arguments), so
minutes of rate limiting take no time; one test sleeps for real.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

import pytest

from copydesk.flow import (
    HELD_S,
    WINDOW_S,
    Limits,
    LocalSlots,
    MemoryFlowControl,
    Permit,
    window_wait,
)


class FakeClock:
    """Monotonic seconds that move only when someone sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def flow(limits: dict[str, Limits], clock: FakeClock) -> MemoryFlowControl:
    """Exact 60 s windows (no send margin), so the arithmetic below reads plainly."""
    return MemoryFlowControl(limits, clock=clock, sleep=clock.sleep, held_s=WINDOW_S)


def most_in_any_window(stamps: list[float], weights: list[int] | None = None) -> int:
    """The largest total (count, or sum of ``weights``) inside any half-open 60 s window."""
    pairs = sorted(zip(stamps, weights or [1] * len(stamps), strict=True))
    best = 0
    for start, _ in pairs:
        best = max(best, sum(w for t, w in pairs if start <= t < start + WINDOW_S))
    return best


# --- window_wait ----------------------------------------------------------------------


def test_an_empty_window_never_waits() -> None:
    assert window_wait(deque(), 0.0, 1, 10, 10, WINDOW_S) == 0.0
    assert window_wait(deque(), 0.0, None, None, 10**9, WINDOW_S) == 0.0


def test_requests_wait_for_the_oldest_event_that_must_leave() -> None:
    events = deque([(0.0, 1), (10.0, 1), (20.0, 1)])

    assert window_wait(events.copy(), 30.0, 4, None, 1, WINDOW_S) == 0.0
    assert (
        window_wait(events.copy(), 30.0, 3, None, 1, WINDOW_S) == 30.0
    )  # the one at 0 leaves at 60
    assert window_wait(events.copy(), 30.0, 2, None, 1, WINDOW_S) == 40.0  # two must leave: 10 + 60
    assert window_wait(events.copy(), 30.0, 1, None, 1, WINDOW_S) == 50.0


def test_events_a_minute_old_are_dropped() -> None:
    events = deque([(0.0, 5), (30.0, 5)])

    assert (
        window_wait(events, 60.0, 2, None, 1, WINDOW_S) == 0.0
    )  # the event at 0 left at exactly 60
    assert list(events) == [(30.0, 5)]
    assert window_wait(events, 59.0, 1, None, 1, WINDOW_S) == 31.0


def test_tokens_wait_until_enough_have_left() -> None:
    events = deque([(0.0, 50), (10.0, 30), (20.0, 20)])

    assert window_wait(events.copy(), 30.0, None, 150, 50, WINDOW_S) == 0.0  # 100 + 50 fits
    assert (
        window_wait(events.copy(), 30.0, None, 100, 40, WINDOW_S) == 30.0
    )  # 50 leaving at 60 is enough
    assert (
        window_wait(events.copy(), 30.0, None, 100, 60, WINDOW_S) == 40.0
    )  # needs 50 + 30 to leave
    assert window_wait(events.copy(), 30.0, None, 100, 100, WINDOW_S) == 50.0  # needs all of them


def test_both_limits_take_the_longer_wait() -> None:
    events = deque([(0.0, 10), (10.0, 90)])

    assert (
        window_wait(events.copy(), 30.0, 3, 100, 15, WINDOW_S) == 40.0
    )  # tokens: the 90 must go too
    assert (
        window_wait(events.copy(), 30.0, 2, 1000, 5, WINDOW_S) == 30.0
    )  # requests: the oldest goes
    assert window_wait(events.copy(), 30.0, 2, 100, 15, WINDOW_S) == 40.0  # requests 30, tokens 40
    assert window_wait(events.copy(), 30.0, 1, 100, 5, WINDOW_S) == 40.0  # requests 40, tokens 30


# --- MemoryFlowControl on a fake clock ---------------------------------------------------


async def test_unlimited_providers_never_wait() -> None:
    clock = FakeClock()
    control = flow({"open": Limits()}, clock)

    permits = [await control.acquire(p, 10**6) for p in ("open", "unknown") for _ in range(50)]

    assert clock.sleeps == []
    assert permits[0] == Permit("open", 10**6)


async def test_requests_per_minute_sequential() -> None:
    clock = FakeClock()
    control = flow({"p": Limits(requests_per_minute=3)}, clock)

    stamps = []
    for _ in range(7):
        await control.acquire("p", 1)
        stamps.append(clock.now - 1000.0)

    assert stamps == [0.0, 0.0, 0.0, 60.0, 60.0, 60.0, 120.0]
    assert most_in_any_window(stamps) == 3


async def test_never_more_than_the_limit_in_any_minute_under_concurrency() -> None:
    clock = FakeClock()
    control = flow({"p": Limits(requests_per_minute=4)}, clock)
    stamps: list[float] = []

    async def client(gap: float) -> None:
        for _ in range(5):
            await control.acquire("p", 1)
            stamps.append(clock.now)
            await clock.sleep(gap)

    await asyncio.gather(*(client(g) for g in (0.0, 7.0, 13.0, 29.0)))

    assert len(stamps) == 20
    assert most_in_any_window(stamps) == 4
    # No slower than it must be: 20 requests at 4 a minute need five windows.
    assert max(stamps) - min(stamps) < 5 * WINDOW_S


async def test_tokens_per_minute_hold_under_random_load() -> None:
    rng = random.Random(11)
    clock = FakeClock()
    limits = Limits(requests_per_minute=7, tokens_per_minute=1000)
    control = flow({"p": limits}, clock)
    stamps: list[float] = []
    spent: list[int] = []

    async def client() -> None:
        for _ in range(15):
            permit = await control.acquire("p", rng.randint(50, 400))
            actual = rng.randint(10, permit.tokens)  # usage comes in at or under the estimate
            await control.settle(permit, actual)
            stamps.append(clock.now)
            spent.append(actual)
            await clock.sleep(rng.uniform(0, 20))

    await asyncio.gather(*(client() for _ in range(4)))

    assert len(stamps) == 60
    assert most_in_any_window(stamps) <= 7
    assert most_in_any_window(stamps, spent) <= 1000


async def test_a_request_larger_than_the_token_limit_is_cut_to_it() -> None:
    clock = FakeClock()
    control = flow({"p": Limits(tokens_per_minute=100)}, clock)

    first = await control.acquire("p", 500)
    second = await control.acquire("p", 500)

    assert (first.tokens, second.tokens) == (100, 100)
    assert clock.now - 1000.0 == 60.0  # the second waited for the first to leave


async def test_settle_gives_back_unused_tokens() -> None:
    clock = FakeClock()
    control = flow({"p": Limits(tokens_per_minute=100)}, clock)

    permit = await control.acquire("p", 80)
    await control.settle(permit, 10)
    await control.acquire("p", 90)  # 10 + 90 fits now

    assert clock.sleeps == []
    third = await control.acquire("p", 5)  # 100 used: waits for the settled one to leave
    assert clock.now - 1000.0 == 60.0
    assert third.tokens == 5


async def test_settle_can_also_charge_more_than_estimated() -> None:
    clock = FakeClock()
    control = flow({"p": Limits(tokens_per_minute=100)}, clock)

    permit = await control.acquire("p", 10)
    await control.settle(permit, 100)
    await control.acquire("p", 1)

    assert clock.now - 1000.0 == 60.0


async def test_limits_are_per_provider() -> None:
    clock = FakeClock()
    control = flow({"a": Limits(requests_per_minute=1), "b": Limits(requests_per_minute=1)}, clock)

    await control.acquire("a", 1)
    await control.acquire("b", 1)

    assert clock.sleeps == []


# --- real sleeping ------------------------------------------------------------------


async def test_a_waiter_really_waits_and_a_cancelled_one_lets_the_next_in() -> None:
    shift = [0.0]
    control = MemoryFlowControl(
        {"p": Limits(requests_per_minute=2)}, clock=lambda: time.monotonic() + shift[0]
    )
    await control.acquire("p", 1)
    await control.acquire("p", 1)

    with pytest.raises(TimeoutError):  # it sleeps (holding the provider's queue) until cancelled
        await asyncio.wait_for(control.acquire("p", 1), 0.2)

    shift[0] += HELD_S  # a minute (and the send margin) later the window is empty again
    await asyncio.wait_for(control.acquire("p", 1), 0.2)
    await asyncio.wait_for(control.acquire("p", 1), 0.2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(control.acquire("p", 1), 0.2)


async def test_permits_are_held_a_little_longer_than_the_window_by_default() -> None:
    """The provider counts arrivals, which come a moment after the permit: by default a
    permit counts for the window plus a send margin, so arrivals never exceed the limit."""
    assert HELD_S > WINDOW_S
    clock = FakeClock()
    control = MemoryFlowControl(
        {"p": Limits(requests_per_minute=1)}, clock=clock, sleep=clock.sleep
    )
    await control.acquire("p", 1)
    await control.acquire("p", 1)
    assert clock.now - 1000.0 == pytest.approx(HELD_S)


# --- LocalSlots: provider concurrency in one process ----------------------------------


async def test_local_slots_hold_the_limit_and_hand_a_freed_slot_to_the_longest_waiter() -> None:
    slots = LocalSlots({"p": 2})
    first, second = await slots.acquire("p"), await slots.acquire("p")
    assert {first, second} == {0, 1}
    assert slots.in_use("p") == 2
    order: list[str] = []

    async def wait(name: str) -> int:
        slot = await slots.acquire("p")
        order.append(name)
        return slot

    waiting = [asyncio.create_task(wait(n)) for n in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting), "a third call must wait for a slot"
    slots.release("p", first)
    assert await waiting[0] == first  # handed over, not put back
    assert slots.in_use("p") == 2
    slots.release("p", second)
    assert await waiting[1] == second
    assert order == ["a", "b"]
    assert not waiting[2].done()
    slots.release("p", first)
    third = await waiting[2]
    assert third == first
    slots.release("p", second)
    slots.release("p", third)
    assert slots.in_use("p") == 0


async def test_a_cancelled_waiter_gives_back_a_slot_handed_to_it() -> None:
    slots = LocalSlots({"p": 1})
    held = await slots.acquire("p")
    waiter = asyncio.create_task(slots.acquire("p"))
    behind = asyncio.create_task(slots.acquire("p"))
    await asyncio.sleep(0)
    slots.release("p", held)  # handed to ``waiter``, which is cancelled before it runs
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The slot went on to the next waiter instead of being lost.
    assert await asyncio.wait_for(behind, 1) == held
    assert slots.in_use("p") == 1


async def test_a_waiter_cancelled_before_any_slot_frees_leaves_no_trace() -> None:
    slots = LocalSlots({"p": 1})
    held = await slots.acquire("p")
    waiter = asyncio.create_task(slots.acquire("p"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release("p", held)
    assert slots.in_use("p") == 0
    assert await slots.acquire("p") == held


async def test_local_slots_leave_unknown_providers_unbounded_and_fail_waiters_on_close() -> None:
    slots = LocalSlots({"p": 1})
    assert [await slots.acquire("other") for _ in range(5)] == [-1] * 5
    slots.release("other", -1)
    await slots.acquire("p")
    waiter = asyncio.create_task(slots.acquire("p"))
    await asyncio.sleep(0)
    await slots.close()
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
