"""The job domain: status mapping, failure classification and the retry policy."""

from __future__ import annotations

import random

import pytest

from copydesk.errors import (
    InvalidInputs,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from copydesk.jobs import (
    ACTIVE,
    TERMINAL,
    Failure,
    RetryPolicy,
    WireStatus,
    classify,
    statuses_for,
    wire_status,
)
from copydesk.prompts import PromptRenderError


class Fixed(random.Random):
    """A random source that always draws ``value`` (to pin the jitter)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


# --- statuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "wire"),
    [
        ("queued", "in_progress"),
        ("running", "in_progress"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("cancelled", "failed"),
    ],
)
def test_wire_status(status: str, wire: str) -> None:
    assert wire_status(status) == wire


@pytest.mark.parametrize(
    ("wire", "statuses"),
    [
        ("in_progress", ("queued", "running")),
        ("completed", ("completed",)),
        ("failed", ("failed", "cancelled")),
    ],
)
def test_statuses_for_a_wire_filter(wire: WireStatus, statuses: tuple[str, ...]) -> None:
    assert statuses_for(wire) == statuses


def test_every_status_is_found_by_its_own_wire_filter() -> None:
    assert set(ACTIVE) | set(TERMINAL) == {"queued", "running", "completed", "failed", "cancelled"}
    for status in (*ACTIVE, *TERMINAL):
        assert status in statuses_for(wire_status(status))


def test_unknown_status_has_no_wire_status() -> None:
    with pytest.raises(KeyError):
        wire_status("paused")


# --- classify -----------------------------------------------------------------------


def test_classify_rate_limited_keeps_retry_after() -> None:
    failure = classify(ProviderRateLimited("vllm", "slow down", retry_after_s=2.5))

    assert failure == Failure("rate_limited", "vllm: slow down", True, 2.5)


def test_classify_unavailable_is_transient_with_retry_after() -> None:
    assert classify(ProviderUnavailable("vllm", "HTTP 503", 4.0)) == Failure(
        "unavailable", "vllm: HTTP 503", True, 4.0
    )
    assert classify(ProviderUnavailable("vllm", "connection refused")).retry_after_s is None


def test_classify_timeout_is_transient() -> None:
    assert classify(ProviderTimeout("vllm", "no answer within 5s")) == Failure(
        "timeout", "vllm: no answer within 5s", True
    )


def test_classify_rejected_is_permanent_and_names_the_providers_message() -> None:
    failure = classify(ProviderRejected("vllm", "HTTP 400: context too long"))

    assert (failure.error_class, failure.transient) == ("rejected", False)
    assert failure.message == (
        "the model provider rejected the request: vllm: HTTP 400: context too long"
    )


def test_classify_other_provider_errors_follow_their_transient_flag() -> None:
    class Flaky(ProviderError):
        transient = True

    assert classify(ProviderError("plugin", "broken")) == Failure(
        "provider_error", "plugin: broken", False
    )
    assert classify(Flaky("plugin", "try again")) == Failure(
        "provider_error", "plugin: try again", True
    )


def test_classify_prompt_errors_are_permanent() -> None:
    assert classify(PromptRenderError("list index out of range")) == Failure(
        "prompt_error", "list index out of range", False
    )


def test_classify_anything_else_is_an_internal_permanent_failure() -> None:
    failure = classify(KeyError("topic"))

    assert (failure.error_class, failure.transient) == ("internal", False)
    assert failure.message == "internal error: KeyError: 'topic'"
    # A CopydeskError that is not a provider or prompt failure is internal too.
    assert classify(InvalidInputs([])).error_class == "internal"


# --- retry policy ---------------------------------------------------------------------


def test_delay_doubles_per_attempt() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=1000.0, jitter=0.0)

    assert [policy.delay(n, None) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert policy.delay(0, None) == 1.0  # attempt numbers start at 1; 0 is treated as 1


def test_delay_is_capped_including_its_jitter() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=9.0, jitter=0.25)

    assert policy.delay(4, None, Fixed(0.0)) == 8.0
    assert policy.delay(4, None, Fixed(0.99)) == 9.0  # 8 * 1.2475 would be over the cap
    assert policy.delay(5, None, Fixed(0.0)) == 9.0
    assert policy.delay(50, None, Fixed(0.5)) == 9.0
    assert policy.delay(100_000, None) == 9.0  # no float overflow for huge attempt numbers


def test_delay_jitter_stays_within_its_bounds() -> None:
    policy = RetryPolicy(base_delay_s=2.0, max_delay_s=1000.0, jitter=0.25)
    rng = random.Random(7)

    delays = [policy.delay(3, None, rng) for _ in range(2000)]

    assert all(8.0 <= d <= 10.0 for d in delays)
    assert policy.delay(3, None, Fixed(0.0)) == 8.0
    assert policy.delay(3, None, Fixed(0.5)) == 9.0
    # Jitter spreads a crowd out: the draws cover most of the range.
    assert max(delays) - min(delays) > 1.8


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(base_delay_s=0.05, max_delay_s=60.0, jitter=0.25)
    rng = random.Random(3)

    for attempt in (1, 2, 3):
        for _ in range(200):
            delay = policy.delay(attempt, 5.0, rng)
            assert 5.0 <= delay <= 5.5
    assert policy.delay(1, 5.0, Fixed(0.0)) == 5.0
    # A Retry-After longer than the cap still wins: the provider said so.
    assert policy.delay(1, 120.0, Fixed(0.0)) == 120.0


def test_a_longer_backoff_wins_over_retry_after_up_to_twice_it() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, jitter=0.0)

    assert policy.delay(3, 3.0, Fixed(0.0)) == 4.0  # backoff 4 > Retry-After 3
    assert policy.delay(8, 3.0, Fixed(0.0)) == 6.0  # backoff 60, bounded by 2 x 3


def test_zero_or_missing_retry_after_is_plain_backoff() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, jitter=0.0)

    assert policy.delay(2, 0.0) == policy.delay(2, None) == 2.0


def test_should_retry_transient_failures_until_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=3)
    transient = Failure("unavailable", "down", True)
    permanent = Failure("rejected", "no", False)

    assert [policy.should_retry(transient, n) for n in (1, 2, 3, 4)] == [
        True,
        True,
        False,
        False,
    ]
    assert not policy.should_retry(permanent, 1)
    assert not RetryPolicy(max_attempts=1).should_retry(transient, 1)
