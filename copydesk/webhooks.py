"""Webhooks: event types, Standard Webhooks signatures, the retry schedule, the records and
the ``WebhookStore`` port. Pure, no I/O.

An organisation registers *endpoints* (a URL and the event types it wants). A state change
(a job completed or failed, a batch completed) writes one *delivery* per subscribed endpoint
into a durable outbox, in the transaction of the change itself; workers send them
(:mod:`copydesk.subscriptions`). Signatures follow https://www.standardwebhooks.com/:
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
base64-decoded part of the ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

EventType = Literal["job.completed", "job.failed", "batch.completed"]
EVENT_TYPES: tuple[EventType, ...] = ("job.completed", "job.failed", "batch.completed")
DeliveryStatus = Literal["pending", "delivered", "failed"]
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def new_secret() -> str:
    """A signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message (Standard Webhooks, v1)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers (plus the JSON content type)."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


@dataclass(frozen=True)
class DeliveryPolicy:
    """When a failed delivery is tried again: ``backoff_s[n-1]`` after attempt ``n`` (the
    last value repeats), jittered by up to ``jitter`` either way; ``failed`` after
    ``max_attempts`` attempts."""

    backoff_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 3600.0, 10800.0, 21600.0)
    max_attempts: int = 8
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        rng = rng or random.Random()
        if not self.backoff_s:
            return 0.0
        base = self.backoff_s[min(max(attempt, 1), len(self.backoff_s)) - 1]
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


def job_event(
    event_type: EventType,
    *,
    job_id: str,
    application_id: str,
    created_at: datetime,
    completed_at: datetime,
    title: str | None = None,
    suggestion: str | None = None,
    error: str | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """The body of a ``job.completed`` / ``job.failed`` message. ``status`` is Writer's."""
    data: dict[str, Any] = {
        "id": job_id,
        "application_id": application_id,
        "status": "completed" if event_type == "job.completed" else "failed",
        "created_at": created_at.isoformat(),
        "completed_at": completed_at.isoformat(),
    }
    if batch_id is not None:
        data["batch_id"] = batch_id
    if event_type == "job.completed":
        data["data"] = {"title": title, "suggestion": suggestion}
    else:
        data["error"] = error
    return {"type": event_type, "timestamp": completed_at.isoformat(), "data": data}


def batch_event(batch: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The body of a ``batch.completed`` message: the batch object as the API shows it."""
    return {"type": "batch.completed", "timestamp": at.isoformat(), "data": batch}


# --- records and the port ------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    id: str
    org_id: str
    url: str
    events: list[str]
    description: str | None
    secret: str
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    """One message to one endpoint, and how sending it went so far."""

    id: str
    event_id: str
    endpoint_id: str
    org_id: str
    event_type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    max_attempts: int | None = None


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for one attempt, with what sending it needs."""

    delivery: Delivery
    url: str
    secret: str


@dataclass(frozen=True)
class Attempted:
    """The end of one attempt (see :meth:`WebhookStore.finish_deliveries`)."""

    delivery_id: str
    status: DeliveryStatus
    at: datetime
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class NewEndpoint:
    id: str
    org_id: str
    url: str
    events: Sequence[str]
    description: str | None
    secret: str = field(repr=False)


class WebhookStore(Protocol):
    """Endpoints and the delivery outbox. Every read is scoped by organisation."""

    async def create_endpoint(self, new: NewEndpoint) -> Endpoint: ...

    async def list_endpoints(self, org_id: str) -> list[Endpoint]: ...

    async def get_endpoint(self, org_id: str, endpoint_id: str) -> Endpoint | None: ...

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        """Remove the endpoint and its deliveries; False when it does not exist."""
        ...

    async def list_deliveries(
        self, org_id: str, endpoint_id: str, limit: int
    ) -> list[Delivery]: ...

    async def redeliver(
        self, org_id: str, delivery_id: str, extra_attempts: int
    ) -> Delivery | None:
        """Send the delivery again now (same event id), allowing ``extra_attempts`` more
        attempts; None when it does not exist."""
        ...

    async def claim_deliveries(self, limit: int, lease_s: float) -> list[DueDelivery]:
        """Take up to ``limit`` due pending deliveries under a lease of ``lease_s``, counting
        the attempt; safe across workers."""
        ...

    async def finish_deliveries(self, attempts: list[Attempted]) -> None: ...
