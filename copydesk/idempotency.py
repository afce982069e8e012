"""Idempotent creates: the first request with an ``Idempotency-Key`` runs, its answer is
kept for ``ttl_s`` and replayed to every later request with the same key and the same
fingerprint (method, path, query and a hash of the body).

- The winner among concurrent duplicates is the one whose insert of the key succeeds;
  the others wait (polling, at most ``wait_s``) for its answer and replay it.
- Only successful answers are kept: when the request fails (a 400 for bad inputs, a 404,
  an unexpected error) the key is released, so the fixed request can use it again.
- A key is held under a lease of ``lease_s``, renewed while the request runs (a 100 MB
  upload can take longer); a crashed request's key is taken over once its lease ran out.
- A streamed body (a file upload) is hashed as it is stored, so its fingerprint is known
  only at the end: a duplicate waits for the original's answer *before* reading its own
  body, then reads and hashes it without storing it to compare.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from copydesk.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, InvalidRequest, Problem
from copydesk.store import IdempotencyRecord, IdempotencyStore

log = logging.getLogger("copydesk.idempotency")

MAX_KEY_LENGTH = 255
#: How often (at most) a process deletes expired keys, and how many at a time.
PURGE_EVERY_S = 60.0
PURGE_LIMIT = 10_000


@dataclass(frozen=True)
class Answer:
    """A create's answer as it is kept and replayed: status code, JSON body, object id."""

    status_code: int
    body: Any
    object_id: str | None = None


@dataclass(frozen=True)
class Reply:
    """What :meth:`Idempotency.run` answers: the answer, and whether it is a replay."""

    answer: Answer
    replayed: bool


def check_key(key: str) -> str:
    """The key as given, or InvalidRequest (400) for an empty, long or non-ASCII one."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise InvalidRequest(
            [
                Problem(
                    f"'Idempotency-Key' must be 1 to {MAX_KEY_LENGTH} printable ASCII "
                    f"characters (got {len(key)} characters); a UUID is a good key",
                    "idempotencyKey",
                    input="Idempotency-Key",
                )
            ]
        )
    return key


def fingerprint(method: str, path: str, query: str, body_sha256: str, *extra: str) -> str:
    """The request's identity: method, path, query (parameter order ignored), the
    SHA-256 of its body, and ``extra`` (a streamed upload's file name)."""
    canonical_query = urlencode(sorted(parse_qsl(query, keep_blank_values=True)))
    digest = hashlib.sha256()
    for part in (method.upper(), path, canonical_query, body_sha256, *extra):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


#: The request's own work: its answer and its fingerprint (known at the end when the
#: body is streamed).
Create = Callable[[], Awaitable[tuple[Answer, str]]]
#: Reads and hashes a streamed body without storing it: the request's fingerprint.
Digest = Callable[[], Awaitable[str]]


class Idempotency:
    def __init__(
        self,
        store: IdempotencyStore,
        *,
        ttl_s: float,
        lease_s: float,
        wait_s: float,
        poll_s: float = 0.2,
    ) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.wait_s = wait_s
        self._poll_s = poll_s
        self._next_purge = 0.0

    async def run(
        self,
        org_id: str,
        key: str,
        create: Create,
        *,
        known: str | None,
        digest: Digest | None = None,
    ) -> Reply:
        """Run ``create`` once per (organisation, key); replay its answer to duplicates.

        ``known``: the request's fingerprint when it is known before ``create`` runs (a
        body read whole); None for a streamed body, then ``digest`` computes it for a
        duplicate (after the original's answer is known).
        """
        if known is None and digest is None:
            raise ValueError("a streamed request needs a digest to compare its body")
        await self._purge_now_and_then()
        owner = str(uuid.uuid4())
        started = time.monotonic()
        delay = 0.02
        held = await self._store.claim_key(org_id, key, known, owner, self.lease_s, self.ttl_s)
        while held is not None:
            if held.fingerprint is not None and known is not None and held.fingerprint != known:
                raise IdempotencyKeyReused(key)
            if held.state == "done":
                return Reply(await self._replay(held, key, known, digest), replayed=True)
            waited = time.monotonic() - started
            if waited >= self.wait_s:
                raise IdempotencyKeyInProgress(key, round(waited, 1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_s)
            held = await self._store.get_key(org_id, key)
            if held is None or _takeable(held):
                held = await self._store.claim_key(
                    org_id, key, known, owner, self.lease_s, self.ttl_s
                )
        return Reply(await self._create(org_id, key, owner, create), replayed=False)

    async def _replay(
        self, held: IdempotencyRecord, key: str, known: str | None, digest: Digest | None
    ) -> Answer:
        mine = known if known is not None else await _call(digest)
        if held.fingerprint != mine:
            raise IdempotencyKeyReused(key)
        assert held.status_code is not None
        return Answer(held.status_code, held.response, held.object_id)

    async def _create(self, org_id: str, key: str, owner: str, create: Create) -> Answer:
        renewing = asyncio.create_task(self._renew(org_id, key, owner))
        try:
            answer, final = await create()
        except BaseException:
            renewing.cancel()
            await asyncio.shield(self._store.release_key(org_id, key, owner))
            raise
        renewing.cancel()
        stored = await asyncio.shield(
            self._store.complete_key(
                org_id, key, owner, final, answer.status_code, answer.body, answer.object_id
            )
        )
        if not stored:  # only if its lease ran out unrenewed (a stalled process)
            log.warning("idempotency key %r was taken over before its answer was stored", key)
        return answer

    async def _renew(self, org_id: str, key: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self._store.renew_key(org_id, key, owner, self.lease_s)
            except Exception:  # a database hiccup: the next renewal may work
                log.warning("could not renew the lease of idempotency key %r", key, exc_info=True)

    async def _purge_now_and_then(self) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        try:
            purged = await self._store.purge_keys(PURGE_LIMIT)
        except Exception:
            log.warning("could not delete expired idempotency keys", exc_info=True)
            return
        if purged:
            log.info("deleted %d expired idempotency keys", purged)


def _takeable(held: IdempotencyRecord) -> bool:
    now = datetime.now(UTC)
    if held.expires_at <= now:
        return True
    return held.state == "in_flight" and (
        held.lease_expires_at is None or held.lease_expires_at <= now
    )


async def _call(digest: Digest | None) -> str:
    assert digest is not None
    return await digest()
