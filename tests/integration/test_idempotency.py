"""Idempotency keys on a real SQLite and a real PostgreSQL: the store's claim, lease,
expiry and purge, and the service's replay, conflict and wait semantics."""

from __future__ import annotations

import asyncio

import pytest

from copydesk.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, InvalidRequest
from copydesk.idempotency import Answer, Idempotency
from copydesk.stores.idempotency import SQLIdempotencyStore
from copydesk.stores.sql import SQLStore

DAY = 24 * 3600.0


@pytest.fixture
async def keys(store: SQLStore) -> SQLIdempotencyStore:
    return SQLIdempotencyStore(store)


async def _org(store: SQLStore, name: str = "acme") -> str:
    return (await store.create_organization(name)).id


# --- the store ---------------------------------------------------------------------------


async def test_the_first_claim_wins_and_the_others_see_its_record(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    assert await keys.claim_key(org, "k1", "fp-a", "owner-1", 60, DAY) is None

    held = await keys.claim_key(org, "k1", "fp-b", "owner-2", 60, DAY)
    assert held is not None
    assert (held.state, held.fingerprint, held.status_code) == ("in_flight", "fp-a", None)

    assert await keys.complete_key(org, "k1", "owner-1", "fp-a", 202, {"id": "j1"}, "j1")
    done = await keys.claim_key(org, "k1", "fp-a", "owner-3", 60, DAY)
    assert done is not None
    assert (done.state, done.status_code, done.response, done.object_id) == (
        "done",
        202,
        {"id": "j1"},
        "j1",
    )
    assert done.lease_expires_at is None


async def test_keys_are_scoped_by_organisation(store: SQLStore, keys: SQLIdempotencyStore) -> None:
    acme, globex = await _org(store, "acme"), await _org(store, "globex")
    assert await keys.claim_key(acme, "same", "fp", "o1", 60, DAY) is None
    assert await keys.claim_key(globex, "same", "fp", "o2", 60, DAY) is None


async def test_a_released_key_can_be_claimed_again(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    assert await keys.claim_key(org, "k", "fp", "o1", 60, DAY) is None
    await keys.release_key(org, "k", "o2")  # not the holder: nothing happens
    assert await keys.get_key(org, "k") is not None
    await keys.release_key(org, "k", "o1")
    assert await keys.get_key(org, "k") is None
    assert await keys.claim_key(org, "k", "fp2", "o3", 60, DAY) is None


async def test_a_key_whose_holder_stopped_renewing_is_taken_over(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    assert await keys.claim_key(org, "k", "fp", "crashed", 0.2, DAY) is None
    assert await keys.renew_key(org, "k", "crashed", 0.2)
    assert await keys.claim_key(org, "k", "fp", "o2", 60, DAY) is not None  # still held
    await asyncio.sleep(0.3)

    assert await keys.claim_key(org, "k", "fp", "o2", 60, DAY) is None  # taken over
    # The crashed holder's late answer is not stored; the new holder's is.
    assert not await keys.complete_key(org, "k", "crashed", "fp", 202, {"id": "x"}, "x")
    assert not await keys.renew_key(org, "k", "crashed", 60)
    assert await keys.complete_key(org, "k", "o2", "fp", 202, {"id": "y"}, "y")
    record = await keys.get_key(org, "k")
    assert record is not None
    assert record.object_id == "y"


async def test_expired_keys_are_reused_in_place_and_purged(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    for key in ("old-1", "old-2"):
        assert await keys.claim_key(org, key, "fp", "o1", 60, 0.2) is None
        assert await keys.complete_key(org, key, "o1", "fp", 202, {"id": key}, key)
    assert await keys.claim_key(org, "fresh", "fp", "o1", 60, DAY) is None
    await asyncio.sleep(0.3)

    assert await keys.claim_key(org, "old-1", "other", "o2", 60, DAY) is None  # reused
    reused = await keys.get_key(org, "old-1")
    assert reused is not None
    assert (reused.state, reused.fingerprint) == ("in_flight", "other")

    assert await keys.purge_keys() == 1  # old-2; old-1 is live again, fresh is young
    assert await keys.get_key(org, "old-2") is None
    assert await keys.get_key(org, "fresh") is not None


# --- the service -------------------------------------------------------------------------


def _service(keys: SQLIdempotencyStore, **options: float) -> Idempotency:
    settings = {"ttl_s": DAY, "lease_s": 60.0, "wait_s": 30.0, "poll_s": 0.05, **options}
    return Idempotency(keys, **settings)


async def test_concurrent_duplicates_create_once_and_all_get_the_same_answer(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    service = _service(keys)
    created: list[int] = []

    async def create() -> tuple[Answer, str]:
        created.append(1)
        await asyncio.sleep(0.3)  # the duplicates arrive while this one runs
        return Answer(202, {"id": "job-1", "status": "in_progress"}, "job-1"), "fp"

    outcomes = await asyncio.gather(
        *(service.run(org, "dup", create, known="fp") for _ in range(20))
    )

    assert len(created) == 1
    expected = Answer(202, {"id": "job-1", "status": "in_progress"}, "job-1")
    assert all(o.answer == expected for o in outcomes)
    assert sorted(o.replayed for o in outcomes) == [False] + [True] * 19


async def test_another_request_with_the_key_is_a_conflict(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    service = _service(keys)

    async def create() -> tuple[Answer, str]:
        return Answer(202, {"id": "a"}, "a"), "fp-a"

    await service.run(org, "k", create, known="fp-a")
    with pytest.raises(IdempotencyKeyReused):
        await service.run(org, "k", create, known="fp-b")


async def test_a_failed_request_keeps_nothing_and_its_key_can_be_used_again(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    service = _service(keys)

    async def invalid() -> tuple[Answer, str]:
        raise InvalidRequest([])

    async def valid() -> tuple[Answer, str]:
        return Answer(202, {"id": "fixed"}, "fixed"), "fp-fixed"

    with pytest.raises(InvalidRequest):
        await service.run(org, "k", invalid, known="fp-bad")
    assert await keys.get_key(org, "k") is None
    outcome = await service.run(org, "k", valid, known="fp-fixed")
    assert (outcome.answer.object_id, outcome.replayed) == ("fixed", False)


async def test_a_duplicate_of_a_slow_request_gives_up_after_the_wait(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    service = _service(keys, wait_s=0.3)
    release = asyncio.Event()

    async def slow() -> tuple[Answer, str]:
        await release.wait()
        return Answer(202, {"id": "s"}, "s"), "fp"

    first = asyncio.create_task(service.run(org, "k", slow, known="fp"))
    await asyncio.sleep(0.1)
    with pytest.raises(IdempotencyKeyInProgress):
        await service.run(org, "k", slow, known="fp")
    release.set()
    assert (await first).answer.object_id == "s"


async def test_a_streamed_duplicate_reads_its_body_only_after_the_original_answered(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    service = _service(keys)
    events: list[str] = []

    async def upload() -> tuple[Answer, str]:
        await asyncio.sleep(0.3)
        events.append("stored")
        return Answer(200, {"id": "file-1"}, "file-1"), "fp-body"

    async def same_body() -> str:
        events.append("hashed")
        return "fp-body"

    async def other_body() -> str:
        return "fp-other"

    first = asyncio.create_task(service.run(org, "f", upload, known=None, digest=same_body))
    await asyncio.sleep(0.05)
    replay = await service.run(org, "f", upload, known=None, digest=same_body)
    assert (await first).answer == replay.answer
    assert replay.replayed
    assert events == ["stored", "hashed"]
    with pytest.raises(IdempotencyKeyReused):
        await service.run(org, "f", upload, known=None, digest=other_body)


async def test_a_long_request_keeps_its_key_by_renewing_the_lease(
    store: SQLStore, keys: SQLIdempotencyStore
) -> None:
    org = await _org(store)
    service = _service(keys, lease_s=0.3)
    runs: list[int] = []

    async def long() -> tuple[Answer, str]:
        runs.append(1)
        await asyncio.sleep(1.0)  # longer than three leases
        return Answer(202, {"id": "long"}, "long"), "fp"

    first = asyncio.create_task(service.run(org, "k", long, known="fp"))
    await asyncio.sleep(0.1)
    second = await service.run(org, "k", long, known="fp")
    assert runs == [1]
    assert second.replayed
    assert (await first).answer == second.answer
