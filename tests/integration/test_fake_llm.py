"""The fake LLM server's own behaviour, seen from real HTTP clients."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from copydesk.testing.fake_llm import LISTENING_PREFIX, FakeLLMConfig, FakeLLMServer


def chat(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(FakeLLMConfig()) as server:
        yield server


@pytest.fixture
async def client(fake: FakeLLMServer) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=fake.url, limits=limits, timeout=10) as client:
        yield client


async def stats(client: httpx.AsyncClient, **query: str) -> dict[str, Any]:
    response = await client.get("/_stats", params=query)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_answers_chat_completions_and_models(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/chat/completions", json=chat("one two three"))
    models = await client.get("/v1/models")

    assert answer.status_code == 200
    body = answer.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Echo: one two three"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert body["model"] == "m"
    assert models.json()["data"][0]["id"] == "fake-llm"


async def test_streams_server_sent_events_with_usage(client: httpx.AsyncClient) -> None:
    body = chat("one two", stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]

    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Echo: one two"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_script_applies_in_order_then_random_mode(
    fake: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    control = await client.post(
        "/_control", json={"script": ["429", "500", "ok", 503], "retry_after_s": 2}
    )
    assert control.json()["script"] == ["429", "500", "ok", "503"]

    statuses = []
    for _ in range(5):
        response = await client.post("/v1/chat/completions", json=chat())
        statuses.append(response.status_code)
        if response.status_code in (429, 503):
            assert response.headers["retry-after"] == "2"
            assert "injected" in response.json()["error"]["message"]

    assert statuses == [429, 500, 200, 503, 200]
    assert (await stats(client))["status_counts"] == {"200": 2, "429": 1, "500": 1, "503": 1}


async def test_random_mode_is_reproducible_with_a_seed(fake: FakeLLMServer) -> None:
    async def run() -> list[int]:
        fake.configure(rate_429=0.3, rate_500=0.2, seed=42)
        async with httpx.AsyncClient(base_url=fake.url) as client:
            return [
                (await client.post("/v1/chat/completions", json=chat())).status_code
                for _ in range(40)
            ]

    first, second = await run(), await run()
    assert first == second
    assert {429, 500, 200} == set(first)


async def test_control_rejects_unknown_or_invalid_settings(client: httpx.AsyncClient) -> None:
    response = await client.post("/_control", json={"latency": 1, "rate_500": 3})

    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "unknown setting 'latency'" in message
    assert "rate_500 must be between 0 and 1" in message
    assert (await client.get("/_control")).json()["rate_500"] == 0.0


async def test_reject_400_and_max_tokens(fake: FakeLLMServer, client: httpx.AsyncClient) -> None:
    fake.configure(reject_400_if_contains="forbidden")

    rejected = await client.post("/v1/chat/completions", json=chat("a forbidden word"))
    cut = await client.post("/v1/chat/completions", json=chat("a b c d e", max_tokens=2))

    assert rejected.status_code == 400
    assert "forbidden" in rejected.json()["error"]["message"]
    assert cut.json()["choices"][0]["message"]["content"] == "Echo: a"
    assert cut.json()["choices"][0]["finish_reason"] == "length"


async def test_records_peak_concurrency(fake: FakeLLMServer, client: httpx.AsyncClient) -> None:
    fake.configure(latency_s=0.8)  # long enough for all 30 to arrive on a busy machine

    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=chat()) for _ in range(30))
    )

    assert {r.status_code for r in responses} == {200}
    report = await stats(client)
    assert report["peak_in_flight"] == 30
    assert report["in_flight"] == 0
    assert report["requests_total"] == 30


async def test_counts_requests_per_window(fake: FakeLLMServer, client: httpx.AsyncClient) -> None:
    await client.post("/_stats/reset")
    for _ in range(3):
        await client.post("/v1/chat/completions", json=chat())
    await asyncio.sleep(1.05)
    for _ in range(2):
        await client.post("/v1/chat/completions", json=chat())

    report = await stats(client, window_s="1")
    minute = await stats(client, arrivals="0")

    assert report["window_counts"][0] == 3
    assert sum(report["window_counts"]) == 5
    assert report["max_in_window"] == 3
    assert len(report["arrivals"]) == 5
    assert report["arrivals"] == sorted(report["arrivals"])
    assert report["arrivals"][3] - report["arrivals"][2] >= 1.0
    assert minute["window_counts"] == [5]
    assert minute["max_in_window"] == 5
    assert "arrivals" not in minute


async def test_reset_clears_counters(fake: FakeLLMServer, client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat())

    report = (await client.post("/_stats/reset")).json()

    assert report["requests_total"] == 0
    assert report["status_counts"] == {}
    assert report["arrivals"] == []


async def test_detects_a_client_that_disconnects_mid_request(
    fake: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    fake.configure(latency_s=2.0)
    async with httpx.AsyncClient(base_url=fake.url) as impatient:
        request = asyncio.create_task(impatient.post("/v1/chat/completions", json=chat()))
        await asyncio.sleep(0.2)
        assert fake.stats.in_flight == 1
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    deadline = time.monotonic() + 2.0
    while fake.stats.disconnects == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    report = await stats(client)
    assert report["disconnects"] == 1
    assert report["in_flight"] == 0
    assert report["status_counts"] == {}


async def test_a_stream_cut_short_by_the_client_is_a_disconnect(
    fake: FakeLLMServer, client: httpx.AsyncClient
) -> None:
    fake.configure(latency_s=2.0)
    body = chat("one two three four", stream=True)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if "Echo:" in line:
                break

    deadline = time.monotonic() + 2.0
    while fake.stats.disconnects == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert fake.stats.disconnects == 1


async def test_keeps_connections_alive(fake: FakeLLMServer, client: httpx.AsyncClient) -> None:
    for _ in range(5):
        await client.post("/v1/chat/completions", json=chat())

    assert fake.stats.connections_total == 1


async def test_answers_malformed_http_with_400(fake: FakeLLMServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(b"NONSENSE\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), timeout=2)
    finally:
        writer.close()
        await writer.wait_closed()

    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_subprocess_mode_prints_the_listening_line() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "copydesk.testing.fake_llm",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--latency",
        "0.05",
        "--script",
        "429",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        prefix, url = line.split()
        assert prefix == LISTENING_PREFIX
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url) as client:
            first = await client.post("/v1/chat/completions", json=chat())
            second = await client.post("/v1/chat/completions", json=chat())
        assert (first.status_code, second.status_code) == (429, 200)
        assert first.headers["retry-after"] == "1"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.communicate()
    assert process.returncode == 0
