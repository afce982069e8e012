"""The job domain: statuses, their Writer mapping, and the retry policy. Pure, no I/O.

Internal statuses are finer than Writer's three: ``queued`` and ``running`` are both
``in_progress`` on the wire (see :func:`wire_status`); ``cancelled`` (Copydesk's own
endpoints only) shows as ``failed`` on Writer's endpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from copydesk.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from copydesk.prompts import PromptRenderError

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
WireStatus = Literal["in_progress", "completed", "failed"]

#: The error of a job cancelled by request (and of the attempt it ended).
CANCELLED_ERROR = "cancelled by request"
#: Priorities a caller may give (higher runs first); single jobs default to 0, and a
#: batch's rows to -1, so interactive work is not stuck behind a big batch.
PRIORITY_MIN, PRIORITY_MAX = -100, 100
BATCH_PRIORITY = -1

ACTIVE: tuple[JobStatus, ...] = ("queued", "running")
TERMINAL: tuple[JobStatus, ...] = ("completed", "failed", "cancelled")
_WIRE: dict[str, WireStatus] = {
    "queued": "in_progress",
    "running": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "failed",
}


def wire_status(status: str) -> WireStatus:
    return _WIRE[status]


def statuses_for(wire: WireStatus) -> tuple[JobStatus, ...]:
    """Internal statuses behind a Writer status filter."""
    return {
        "in_progress": ACTIVE,
        "completed": ("completed",),
        "failed": ("failed", "cancelled"),
    }[wire]


@dataclass(frozen=True)
class Failure:
    """What went wrong in one attempt, classified."""

    error_class: str
    message: str
    transient: bool
    retry_after_s: float | None = None


def classify(exc: BaseException) -> Failure:
    """Name the failure and say whether another attempt may succeed."""
    match exc:
        case ProviderRateLimited():
            return Failure("rate_limited", exc.message, True, exc.retry_after_s)
        case ProviderUnavailable():
            return Failure("unavailable", exc.message, True, exc.retry_after_s)
        case ProviderTimeout():
            return Failure("timeout", exc.message, True)
        case ProviderRejected():
            return Failure(
                "rejected", f"the model provider rejected the request: {exc.message}", False
            )
        case ProviderError():
            return Failure("provider_error", exc.message, exc.transient)
        case PromptRenderError():
            return Failure("prompt_error", exc.message, False)
        case _:
            return Failure("internal", f"internal error: {type(exc).__name__}: {exc}", False)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a provider's Retry-After wins when it is longer."""

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: float = 0.25

    def delay(
        self, attempt: int, retry_after_s: float | None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        rng = rng or random.Random()
        # The exponent is bounded so a job with very many attempts cannot overflow a float.
        backoff = self.base_delay_s * 2.0 ** min(max(0, attempt - 1), 64)
        # Jitter first, then the cap: no backoff is ever longer than ``max_delay_s``.
        backoff = min(self.max_delay_s, backoff * (1 + self.jitter * rng.random()))
        if retry_after_s is not None and retry_after_s > 0:
            # Honour Retry-After exactly as a floor; add a little jitter so a crowd of
            # workers does not come back in the same millisecond.
            return max(retry_after_s * (1 + 0.1 * rng.random()), min(backoff, retry_after_s * 2))
        return backoff

    def should_retry(self, failure: Failure, attempt: int) -> bool:
        return failure.transient and attempt < self.max_attempts
