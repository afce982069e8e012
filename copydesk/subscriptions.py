"""Webhook operations: registering endpoints (the API) and delivering the outbox (workers).

- :class:`Subscriptions` checks and stores endpoints, reads the delivery log, redelivers.
  A URL must be http(s); a literal private, loopback or reserved address (or
  ``localhost``) is refused at registration unless ``webhook_allow`` names it.
- :class:`Courier` is a worker loop: it claims due deliveries under a lease (SKIP LOCKED
  on PostgreSQL), POSTs each signed message with one reused aiohttp session (time-limited,
  redirects not followed, names resolved through the guarded resolver so a private
  address is refused at connect time too) and records the attempt: 2xx is delivered,
  anything else is tried again after the policy's backoff, then ``failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp

from copydesk import webhooks
from copydesk.errors import DeliveryNotFound, InvalidRequest, Problem, WebhookNotFound
from copydesk.fetching import AddressPolicy, GuardedResolver, RefusedAddress, refusal
from copydesk.webhooks import (
    EVENT_TYPES,
    Attempted,
    Delivery,
    DeliveryPolicy,
    DueDelivery,
    Endpoint,
    NewEndpoint,
    WebhookStore,
)

log = logging.getLogger("copydesk.webhooks")

MAX_URL_LENGTH = 2000
#: How much of an endpoint's answer is read (and kept in the log when it is an error).
MAX_ANSWER_BYTES = 1024


def _now() -> datetime:
    return datetime.now(UTC)


def url_refusal(policy: AddressPolicy, url: str) -> str | None:
    """Why ``url`` cannot be an endpoint, known without DNS; None when it may be."""
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    reason = refusal(policy, url)
    if reason:
        return reason
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if (host == "localhost" or host.endswith(".localhost")) and not policy.host_allowed(host):
        return f"points at a loopback host ({host}), which is not allowed"
    return None


class Subscriptions:
    def __init__(self, store: WebhookStore, allow: list[str], policy: DeliveryPolicy) -> None:
        self._store = store
        self._allow = AddressPolicy(allow)
        self._policy = policy

    async def register(
        self, org_id: str, url: str, events: Sequence[str], description: str | None
    ) -> Endpoint:
        problems = []
        reason = url_refusal(self._allow, url)
        if reason:
            hint = " (private and loopback hosts need COPYDESK_WEBHOOK_ALLOW)"
            private = "private" in reason or "loopback" in reason
            problems.append(
                Problem(f"'url' {reason}{hint if private else ''}", "invalidUrl", input="url")
            )
        unknown = [e for e in events if e not in EVENT_TYPES]
        if unknown or not events:
            problems.append(
                Problem(
                    "'events' must be a non-empty list of "
                    + ", ".join(EVENT_TYPES)
                    + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
                    "invalidEvents",
                    input="events",
                )
            )
        if problems:
            raise InvalidRequest(problems)
        new = NewEndpoint(
            id=str(uuid.uuid4()),
            org_id=org_id,
            url=url,
            events=list(dict.fromkeys(events)),
            description=description,
            secret=webhooks.new_secret(),
        )
        return await self._store.create_endpoint(new)

    async def endpoints(self, org_id: str) -> list[Endpoint]:
        return await self._store.list_endpoints(org_id)

    async def get(self, org_id: str, endpoint_id: str) -> Endpoint:
        endpoint = await self._store.get_endpoint(org_id, endpoint_id)
        if endpoint is None:
            raise WebhookNotFound(endpoint_id)
        return endpoint

    async def delete(self, org_id: str, endpoint_id: str) -> None:
        if not await self._store.delete_endpoint(org_id, endpoint_id):
            raise WebhookNotFound(endpoint_id)

    async def deliveries(self, org_id: str, endpoint_id: str, limit: int) -> list[Delivery]:
        if not 1 <= limit <= 500:
            raise InvalidRequest(
                [Problem("'limit' must be between 1 and 500", "limit", input="limit")]
            )
        await self.get(org_id, endpoint_id)
        return await self._store.list_deliveries(org_id, endpoint_id, limit)

    async def redeliver(self, org_id: str, delivery_id: str) -> Delivery:
        delivery = await self._store.redeliver(org_id, delivery_id, self._policy.max_attempts)
        if delivery is None:
            raise DeliveryNotFound(delivery_id)
        return delivery


class Courier:
    """Sends the outbox: claim due deliveries, POST them signed, record each attempt."""

    def __init__(
        self,
        store: WebhookStore,
        policy: DeliveryPolicy,
        allow: list[str],
        *,
        timeout_s: float,
        poll_s: float,
        concurrency: int = 16,
    ) -> None:
        self._store = store
        self._policy = policy
        self._allow = AddressPolicy(allow)
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._concurrency = concurrency
        # Longer than an attempt can take, so a live worker's delivery is not taken over.
        self._lease_s = timeout_s * 2 + 10

    async def run(self) -> None:
        """Deliver until cancelled."""
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._allow), limit=self._concurrency
        )
        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False
        ) as session:
            while True:
                try:
                    sent = await self.deliver_due(session)
                except Exception:
                    log.exception("delivering webhooks failed")
                    sent = 0
                if not sent:
                    await asyncio.sleep(self._poll_s)

    async def deliver_due(self, session: aiohttp.ClientSession) -> int:
        """One round: the number of deliveries attempted."""
        claimed = await self._store.claim_deliveries(self._concurrency, self._lease_s)
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._attempt(session, due) for due in claimed))
        await self._store.finish_deliveries(list(results))
        return len(claimed)

    async def _attempt(self, session: aiohttp.ClientSession, due: DueDelivery) -> Attempted:
        d = due.delivery
        code, error = await self._post(session, due)
        now = _now()
        if error is None:
            log.info("webhook %s %s to %s: delivered (%s)", d.event_type, d.event_id, due.url, code)
            return Attempted(d.id, "delivered", now, status_code=code)
        allowed = d.max_attempts if d.max_attempts is not None else self._policy.max_attempts
        if d.attempts >= allowed:
            log.warning(
                "webhook %s %s to %s: attempt %d failed (%s); giving up",
                d.event_type,
                d.event_id,
                due.url,
                d.attempts,
                error,
            )
            return Attempted(d.id, "failed", now, status_code=code, error=error)
        delay = self._policy.delay(d.attempts)
        log.info(
            "webhook %s %s to %s: attempt %d failed (%s); next in %.1fs",
            d.event_type,
            d.event_id,
            due.url,
            d.attempts,
            error,
            delay,
        )
        return Attempted(
            d.id,
            "pending",
            now,
            status_code=code,
            error=error,
            next_attempt_at=now + timedelta(seconds=delay),
        )

    async def _post(
        self, session: aiohttp.ClientSession, due: DueDelivery
    ) -> tuple[int | None, str | None]:
        """The answer's status code and, unless it was a 2xx, what went wrong."""
        reason = url_refusal(self._allow, due.url)
        if reason:
            return None, f"refused: the URL {reason}"
        body = json.dumps(due.delivery.payload, separators=(",", ":")).encode()
        headers = webhooks.headers(due.secret, due.delivery.event_id, int(time.time()), body)
        try:
            async with session.post(
                due.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.content.read(MAX_ANSWER_BYTES)
                if 200 <= response.status < 300:
                    return response.status, None
                text = answer.decode("utf-8", "replace").strip()
                return response.status, f"the endpoint answered {response.status}" + (
                    f": {text[:200]}" if text else ""
                )
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                return None, f"refused: {exc.os_error}"
            return None, f"could not connect ({exc.os_error})"
        except TimeoutError:
            return None, f"no answer within {self._timeout_s:g}s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
