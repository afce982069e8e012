"""The ``openai`` provider against the fake LLM server on a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from copydesk.config import ProviderSettings, Settings
from copydesk.errors import (
    ConfigurationError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from copydesk.provider import GenerationRequest, Message, Provider, StreamEnd, TextDelta
from copydesk.providers.openai_compat import (
    OpenAICompatProvider,
    create,
    retry_after_seconds,
)
from copydesk.testing.fake_llm import FakeLLMConfig, FakeLLMServer

PROMPT = GenerationRequest(
    messages=[
        Message("system", "You write short copy."),
        Message("user", "Write a tagline for a bakery in Lisbon"),
    ],
    max_tokens=64,
)


def build(base_url: str, **overrides: Any) -> OpenAICompatProvider:
    values: dict[str, Any] = {"kind": "openai", "base_url": base_url, "model": "fake-model"}
    values.update(overrides)
    config = ProviderSettings(**values)
    return create("fake", config, Settings(providers={"fake": config}, default_provider="fake"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(FakeLLMConfig()) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeLLMServer) -> AsyncIterator[OpenAICompatProvider]:
    provider = build(fake.base_url, api_key="sk-test", timeout_s=5.0)
    await provider.open()
    try:
        yield provider
    finally:
        await provider.close()


async def test_it_is_a_provider_with_capabilities_from_options(fake: FakeLLMServer) -> None:
    plain = build(fake.base_url)
    with_images = build(fake.base_url, options={"images": True})
    assert isinstance(plain, Provider)
    assert plain.capabilities.streaming is True
    assert plain.capabilities.images is False
    assert with_images.capabilities.images is True


def test_create_needs_a_base_url() -> None:
    config = ProviderSettings(kind="openai")
    with pytest.raises(ConfigurationError, match="BASE_URL"):
        create("vllm", config, Settings(providers={"vllm": config}, default_provider="vllm"))


async def test_generate_parses_text_usage_model_and_finish_reason(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    generation = await provider.generate(PROMPT)

    assert generation.text == "Echo: Write a tagline for a bakery in Lisbon"
    assert generation.usage.prompt_tokens == 12
    assert generation.usage.completion_tokens == 9
    assert generation.model == "fake-model"
    assert generation.finish_reason == "stop"
    assert generation.latency_s > 0
    sent = fake.stats.last_request
    assert sent is not None
    assert sent["headers"]["authorization"] == "Bearer sk-test"
    assert sent["body"]["max_tokens"] == 64
    assert sent["body"]["messages"][1] == {
        "role": "user",
        "content": "Write a tagline for a bakery in Lisbon",
    }


async def test_content_parts_pass_through_as_is(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "Describe this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    generation = await provider.generate(GenerationRequest(messages=[Message("user", parts)]))

    assert generation.text == "Echo: Describe this"
    sent = fake.stats.last_request
    assert sent is not None
    assert sent["body"]["messages"][0]["content"] == parts


async def test_max_tokens_cuts_the_answer(provider: OpenAICompatProvider) -> None:
    request = GenerationRequest(messages=[Message("user", "one two three four five")], max_tokens=3)
    generation = await provider.generate(request)

    assert generation.text == "Echo: one two"
    assert generation.usage.completion_tokens == 3
    assert generation.finish_reason == "length"


async def test_stream_yields_deltas_then_usage(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    events = [event async for event in provider.stream(PROMPT)]

    deltas = [event for event in events if isinstance(event, TextDelta)]
    end = events[-1]
    assert all(isinstance(event, TextDelta) for event in events[:-1])
    assert "".join(d.text for d in deltas) == "Echo: Write a tagline for a bakery in Lisbon"
    assert len(deltas) == 9
    assert isinstance(end, StreamEnd)
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (12, 9)
    assert end.model == "fake-model"
    assert end.finish_reason == "stop"
    sent = fake.stats.last_request
    assert sent is not None
    assert sent["body"]["stream"] is True
    assert sent["body"]["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_estimates_tokens_from_deltas(fake: FakeLLMServer) -> None:
    provider = build(fake.base_url, options={"extra_body": {"stream_options": {}}})
    await provider.open()
    try:
        events = [event async for event in provider.stream(PROMPT)]
    finally:
        await provider.close()

    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (0, 9)


async def test_429_is_rate_limited_with_retry_after(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    fake.configure(script=["429", "429"], retry_after_s=7)

    with pytest.raises(ProviderRateLimited) as generate_error:
        await provider.generate(PROMPT)
    with pytest.raises(ProviderRateLimited) as stream_error:
        _ = [event async for event in provider.stream(PROMPT)]

    assert generate_error.value.retry_after_s == 7
    assert generate_error.value.transient
    assert stream_error.value.retry_after_s == 7
    assert generate_error.value.__cause__ is not None


async def test_500_is_unavailable(fake: FakeLLMServer, provider: OpenAICompatProvider) -> None:
    fake.configure(script=["500", "500"])

    with pytest.raises(ProviderUnavailable, match="HTTP 500") as error:
        await provider.generate(PROMPT)
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        _ = [event async for event in provider.stream(PROMPT)]

    assert error.value.retry_after_s is None


async def test_503_carries_retry_after(fake: FakeLLMServer, provider: OpenAICompatProvider) -> None:
    fake.configure(script=["503"], retry_after_s=2.5)

    with pytest.raises(ProviderUnavailable) as error:
        await provider.generate(PROMPT)

    assert error.value.retry_after_s == 2.5


@pytest.mark.parametrize("status", ["408", "409", "502"])
async def test_transient_statuses_are_unavailable(
    fake: FakeLLMServer, provider: OpenAICompatProvider, status: str
) -> None:
    fake.configure(script=[status])

    with pytest.raises(ProviderUnavailable, match=f"HTTP {status}"):
        await provider.generate(PROMPT)


async def test_stall_past_the_client_timeout_is_a_timeout(fake: FakeLLMServer) -> None:
    fake.configure(script=["stall", "stall"], stall_s=10)
    provider = build(fake.base_url, timeout_s=0.3)
    await provider.open()
    try:
        with pytest.raises(ProviderTimeout) as generate_error:
            await provider.generate(PROMPT)
        with pytest.raises(ProviderTimeout):
            _ = [event async for event in provider.stream(PROMPT)]
    finally:
        await provider.close()

    assert generate_error.value.transient
    assert fake.stats.stalls == 2


async def test_400_is_rejected_with_the_server_message(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    fake.configure(reject_400_if_contains="bakery")

    with pytest.raises(ProviderRejected, match="'bakery', which is refused") as error:
        await provider.generate(PROMPT)
    with pytest.raises(ProviderRejected, match="HTTP 400"):
        _ = [event async for event in provider.stream(PROMPT)]

    assert not error.value.transient


async def test_a_malformed_answer_is_unavailable(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    fake.configure(script=["garbage"])

    with pytest.raises(ProviderUnavailable, match="malformed answer"):
        await provider.generate(PROMPT)


async def test_a_dropped_connection_is_unavailable(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    fake.configure(script=["drop", "drop"])

    with pytest.raises(ProviderUnavailable):
        await provider.generate(PROMPT)
    with pytest.raises(ProviderUnavailable):
        _ = [event async for event in provider.stream(PROMPT)]


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = build(f"http://127.0.0.1:{port}/v1", connect_timeout_s=2.0)
    await provider.open()
    try:
        with pytest.raises(ProviderUnavailable, match="ConnectError") as error:
            await provider.generate(PROMPT)
        with pytest.raises(ProviderUnavailable):
            _ = [event async for event in provider.stream(PROMPT)]
    finally:
        await provider.close()

    assert error.value.__cause__ is not None


async def test_generate_before_open_is_a_programming_error(fake: FakeLLMServer) -> None:
    with pytest.raises(RuntimeError, match="open"):
        await build(fake.base_url).generate(PROMPT)


@pytest.mark.parametrize("max_concurrency", [5, 20])
async def test_concurrent_generates_stay_within_the_pool(
    fake: FakeLLMServer, max_concurrency: int
) -> None:
    fake.configure(latency_s=0.1)
    provider = build(fake.base_url, max_concurrency=max_concurrency)
    await provider.open()
    try:
        results = await asyncio.gather(*(provider.generate(PROMPT) for _ in range(50)))
    finally:
        await provider.close()

    assert len(results) == 50
    assert all(r.text.startswith("Echo:") for r in results)
    assert fake.stats.status_counts[200] == 50
    assert fake.stats.peak_in_flight <= max_concurrency
    assert fake.stats.connections_total <= max_concurrency  # kept alive and reused


async def test_concurrent_generates_run_in_parallel_when_allowed(fake: FakeLLMServer) -> None:
    fake.configure(latency_s=1.0)  # long enough for all 50 to arrive on a busy machine
    provider = build(fake.base_url, max_concurrency=64)
    await provider.open()
    try:
        results = await asyncio.gather(*(provider.generate(PROMPT) for _ in range(50)))
    finally:
        await provider.close()

    assert len(results) == 50
    assert fake.stats.peak_in_flight == 50


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after_seconds({"retry-after": when})
    assert seconds is not None
    assert 28 <= seconds <= 30


async def _disconnects_reach(fake: FakeLLMServer, count: int, within_s: float) -> int:
    deadline = asyncio.get_running_loop().time() + within_s
    while fake.stats.disconnects < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return fake.stats.disconnects


async def test_a_cancelled_call_closes_its_connection(
    fake: FakeLLMServer, provider: OpenAICompatProvider
) -> None:
    """Cancelling a call (a cancelled job, a shutdown deadline) must stop the work at the
    model server: it sees the connection go away, for plain and streamed calls alike."""
    fake.configure(latency_s=3.0)
    call = asyncio.create_task(provider.generate(PROMPT))
    await asyncio.sleep(0.3)
    assert fake.stats.in_flight == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await _disconnects_reach(fake, 1, within_s=1.0) == 1

    async def read_all() -> None:
        async for _ in provider.stream(PROMPT):
            pass

    streaming = asyncio.create_task(read_all())
    await asyncio.sleep(0.3)
    streaming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await streaming
    assert await _disconnects_reach(fake, 2, within_s=1.0) == 2
    assert fake.stats.in_flight == 0
