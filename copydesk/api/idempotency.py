"""``Idempotency-Key`` on create routes, as one FastAPI dependency.

A route takes ``idem: Idempotent`` and wraps its work in one line::

    return await idem.respond(lambda: create(...))          # a parsed JSON body
    return await idem.respond(lambda: create(body), body)   # a body the route read itself
    return await idem.respond_streamed(upload, limit, name)  # F1's streamed upload

Without the header the work simply runs. With it, the answer of the first request is kept
and replayed (same status and body, plus ``Idempotent-Replayed: true``) to later requests
with the same key and fingerprint; see :mod:`copydesk.idempotency`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse

from copydesk.api.auth import Org
from copydesk.errors import PayloadTooLarge
from copydesk.idempotency import Answer, Idempotency, Reply, check_key, fingerprint

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"

Work = Callable[[], Awaitable[JSONResponse]]
#: A streamed create: its response and the SHA-256 (hex) of the body it consumed.
StreamedWork = Callable[[], Awaitable[tuple[JSONResponse, str]]]


class _NotKept(Exception):
    """An error answer returned (not raised) by a route: answered, never kept."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


class IdempotentRequest:
    """One request's Idempotency-Key (``key`` None: the header was not sent)."""

    def __init__(
        self, request: Request, org_id: str, key: str | None, service: Idempotency
    ) -> None:
        self.request = request
        self.org_id = org_id
        self.key = key
        self._service = service

    def _fingerprint(self, body_sha256: str, *extra: str) -> str:
        url = self.request.url
        return fingerprint(self.request.method, url.path, url.query, body_sha256, *extra)

    async def respond(self, work: Work, body: bytes | None = None) -> JSONResponse:
        """Run ``work`` once for this key. The fingerprint hashes ``body`` when the route
        read it itself (under its own size limit), else the request's body read whole (it
        already is, for a route with a parsed body)."""
        if self.key is None:
            return await work()
        raw = body if body is not None else await self.request.body()
        known = self._fingerprint(hashlib.sha256(raw).hexdigest())

        async def create() -> tuple[Answer, str]:
            return _answer(await work()), known

        return await self._run(create, known)

    async def respond_streamed(
        self, work: StreamedWork, limit_bytes: int, *extra: str
    ) -> JSONResponse:
        """Run ``work``, which consumes the body stream itself and reports its SHA-256,
        once for this key. A duplicate waits for the original's answer, then reads and
        hashes its own body (at most ``limit_bytes``, stored nowhere) to compare."""
        if self.key is None:
            response, _ = await work()
            return response

        async def create() -> tuple[Answer, str]:
            response, body_sha256 = await work()
            return _answer(response), self._fingerprint(body_sha256, *extra)

        async def digest() -> str:
            sha, size = hashlib.sha256(), 0
            async for chunk in self.request.stream():
                size += len(chunk)
                if size > limit_bytes:
                    raise PayloadTooLarge(limit_bytes)
                sha.update(chunk)
            return self._fingerprint(sha.hexdigest(), *extra)

        return await self._run(create, None, digest)

    async def _run(
        self,
        create: Callable[[], Awaitable[tuple[Answer, str]]],
        known: str | None,
        digest: Callable[[], Awaitable[str]] | None = None,
    ) -> JSONResponse:
        assert self.key is not None
        try:
            reply = await self._service.run(
                self.org_id, self.key, create, known=known, digest=digest
            )
        except _NotKept as returned:
            return returned.response
        return _response(reply)


def _answer(response: JSONResponse) -> Answer:
    if response.status_code >= 400:
        raise _NotKept(response)
    body = json.loads(bytes(response.body))
    object_id = body.get("id") if isinstance(body, dict) else None
    return Answer(response.status_code, body, object_id if isinstance(object_id, str) else None)


def _response(reply: Reply) -> JSONResponse:
    headers = {REPLAYED: "true"} if reply.replayed else {}
    return JSONResponse(reply.answer.body, status_code=reply.answer.status_code, headers=headers)


async def idempotent_request(
    request: Request,
    org: Org,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Copydesk extension: a unique key (at most 255 characters; a UUID) "
            "that makes this create safe to retry. A replay within 24 h answers the first "
            "request's status and body with 'Idempotent-Replayed: true'; the same key with "
            "another request is a 409.",
        ),
    ] = None,
) -> IdempotentRequest:
    key = check_key(idempotency_key) if idempotency_key is not None else None
    service: Idempotency = request.app.state.copydesk.idempotency
    return IdempotentRequest(request, org.id, key, service)


Idempotent = Annotated[IdempotentRequest, Depends(idempotent_request)]
