"""A provider for any server speaking OpenAI's chat-completions protocol.

vLLM, Ollama, the llama.cpp server, LiteLLM and OpenAI itself all accept
``POST {base_url}/chat/completions``. This adapter sends one request per generation
through a pooled ``httpx.AsyncClient`` (opened in ``open()``, closed in ``close()``),
reads JSON answers or Server-Sent Events streams, and classifies every failure as one of
the ``ProviderError`` subclasses so the job engine can decide between retry and fail:

* 429 -> ``ProviderRateLimited`` (``retry_after_s`` from ``retry-after-ms`` or
  ``Retry-After``, seconds or HTTP-date);
* 408, 409, 5xx, refused or reset connections, malformed answers -> ``ProviderUnavailable``;
* timeouts -> ``ProviderTimeout``;
* any other 4xx -> ``ProviderRejected``, with the server's own message.

Options (``ProviderSettings.options``): ``images`` (bool, the model accepts image parts)
and ``extra_body`` (a mapping merged into every request body, e.g. ``{"top_k": 20}``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, cast

import httpx

from copydesk.errors import (
    ConfigurationError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from copydesk.provider import (
    Capabilities,
    Generation,
    GenerationRequest,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

if TYPE_CHECKING:
    from copydesk.config import ProviderSettings, Settings

_ERROR_TEXT_LIMIT = 500
_SHARD_CONNECTIONS = 16


@dataclass
class _Shard:
    client: httpx.AsyncClient
    capacity: int
    busy: int = 0


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP-date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if seconds >= 0 else None


def _error_detail(response: httpx.Response) -> str:
    """The server's own words: OpenAI's ``{"error": {"message"}}``, Ollama's, FastAPI's."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if key in body:
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
    text = text.strip()
    if not text:
        return response.reason_phrase or "no details"
    return text[:_ERROR_TEXT_LIMIT]


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""  # None: a tool call or a refusal


class OpenAICompatProvider:
    """The ``openai`` provider kind: one OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_concurrency: int = 16,
        images: bool = False,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.capabilities = Capabilities(streaming=True, images=images, deterministic=False)
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_concurrency = max_concurrency
        self._extra_body = dict(extra_body or {})
        self._slots: asyncio.Semaphore | None = None
        self._shards: list[_Shard] = []

    async def open(self) -> None:
        if self._slots is not None:
            return
        # httpx's pool does work quadratic in its size for every request (encode/httpcore
        # #1035), so a large max_concurrency is split over clients of at most
        # _SHARD_CONNECTIONS connections each; together they hold max_concurrency.
        count = -(-self._max_concurrency // _SHARD_CONNECTIONS)
        size, larger = divmod(self._max_concurrency, count)
        capacities = [size + 1 if index < larger else size for index in range(count)]
        self._shards = [_Shard(self._new_client(capacity), capacity) for capacity in capacities]
        self._slots = asyncio.Semaphore(self._max_concurrency)

    async def close(self) -> None:
        shards, self._shards, self._slots = self._shards, [], None
        for shard in shards:
            await shard.client.aclose()

    async def generate(self, request: GenerationRequest) -> Generation:
        body = self._body(request, stream=False)
        started = time.perf_counter()
        async with self._lease() as client:
            try:
                async with asyncio.timeout(self._timeout_s):  # the whole answer, not per read
                    response = await client.post(self.url, json=body)
            except TimeoutError as exc:
                raise ProviderTimeout(
                    self.name, f"no answer from {self.url} within {self._timeout_s:g}s"
                ) from exc
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
        self._check_status(response)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = _message_text(choice["message"].get("content"))
            finish_reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderUnavailable(
                self.name, f"malformed answer from {self.url}: {response.text[:200]!r}"
            ) from exc
        usage = self._usage(data.get("usage"), estimate=len(text.split()))
        return Generation(
            text=text,
            usage=usage,
            model=str(data.get("model") or request.model or self.model or "unknown"),
            latency_s=time.perf_counter() - started,
            finish_reason=str(finish_reason) if finish_reason is not None else None,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        body = self._body(request, stream=True)
        model = request.model or self.model or "unknown"
        usage: Usage | None = None
        finish_reason: str | None = None
        deltas = 0
        done = False
        async with self._lease() as client:
            try:
                async with client.stream(
                    "POST", self.url, json=body, headers={"Accept": "text/event-stream"}
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        self._check_status(response)
                    async with aclosing(self._sse_data(response)) as events:
                        async for data in events:
                            if data.strip() == "[DONE]":
                                done = True
                                break
                            chunk = self._chunk(data)
                            model = str(chunk.get("model") or model)
                            if isinstance(chunk.get("usage"), dict):
                                usage = self._usage(chunk["usage"], estimate=0)
                            choices = chunk.get("choices")
                            if not isinstance(choices, list) or not choices:
                                continue
                            choice = choices[0] if isinstance(choices[0], dict) else {}
                            delta = choice.get("delta")
                            content = delta.get("content") if isinstance(delta, dict) else None
                            if isinstance(content, str) and content:
                                deltas += 1
                                yield TextDelta(content)
                            if choice.get("finish_reason"):
                                finish_reason = str(choice["finish_reason"])
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from exc
        if not done and finish_reason is None:
            raise ProviderUnavailable(self.name, f"the stream from {self.url} ended early")
        yield StreamEnd(
            usage=usage if usage is not None else Usage(0, deltas),
            model=model,
            finish_reason=finish_reason,
        )

    # --- helpers ---------------------------------------------------------------------

    def _new_client(self, connections: int) -> httpx.AsyncClient:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return httpx.AsyncClient(
            headers=headers,
            # read/write between bytes: timeout_s; waiting for a pooled connection is not
            # limited here because ``_slots`` admits only as many requests as connections.
            timeout=httpx.Timeout(self._timeout_s, connect=self._connect_timeout_s, pool=None),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            follow_redirects=False,
        )

    @asynccontextmanager
    async def _lease(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client with a free connection, held for one request (waits while all are busy)."""
        if self._slots is None:
            raise RuntimeError(f"provider {self.name!r} is not open; call open() first")
        async with self._slots:
            shard = max(self._shards, key=lambda candidate: candidate.capacity - candidate.busy)
            shard.busy += 1
            try:
                yield shard.client
            finally:
                shard.busy -= 1

    def _body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        model = request.model or self.model
        if model:
            body["model"] = model
        if request.stop:
            body["stop"] = list(request.stop)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self._extra_body)
        return body

    async def _sse_data(self, response: httpx.Response) -> AsyncGenerator[str, None]:
        """The ``data`` of each Server-Sent Event (multi-line data joined by newlines)."""
        lines: list[str] = []
        # aiter_lines is an async generator; close it even when our reader stops early.
        lines_of_body = cast(AsyncGenerator[str, None], response.aiter_lines())
        async with aclosing(lines_of_body) as stream:
            async for line in stream:
                if not line:
                    if lines:
                        yield "\n".join(lines)
                        lines = []
                    continue
                if line.startswith(":"):
                    continue  # a comment, often a keep-alive
                name, _, value = line.partition(":")
                if name == "data":
                    lines.append(value[1:] if value.startswith(" ") else value)
        if lines:
            yield "\n".join(lines)

    def _chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise ProviderUnavailable(
                self.name, f"malformed stream event from {self.url}: {data[:200]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise ProviderUnavailable(self.name, f"unexpected stream event: {data[:200]!r}")
        if "error" in chunk:  # vLLM and OpenAI report failures inside the stream
            error = chunk["error"]
            detail = error.get("message") if isinstance(error, dict) else error
            raise ProviderUnavailable(self.name, f"the stream failed: {detail}")
        return chunk

    def _usage(self, raw: object, *, estimate: int) -> Usage:
        if isinstance(raw, dict):
            prompt = raw.get("prompt_tokens")
            completion = raw.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                return Usage(prompt, completion)
        return Usage(0, estimate)

    def _check_status(self, response: httpx.Response) -> None:
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise self._status_error(response) from exc

    def _status_error(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        message = f"HTTP {status} from {self.url}: {_error_detail(response)}"
        if status == 429:
            return ProviderRateLimited(self.name, message, retry_after_seconds(response.headers))
        if status in (408, 409) or status >= 500:
            return ProviderUnavailable(self.name, message, retry_after_seconds(response.headers))
        return ProviderRejected(self.name, message)

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(
                self.name, f"{type(exc).__name__} talking to {self.url}: {detail}"
            )
        return ProviderUnavailable(
            self.name, f"{type(exc).__name__} talking to {self.url}: {detail}"
        )


def create(name: str, config: ProviderSettings, settings: Settings) -> OpenAICompatProvider:
    del settings
    if not config.base_url or not config.base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"provider {name!r} (kind openai) needs base_url, the address that ends before "
            f"/chat/completions, e.g. COPYDESK_PROVIDERS__{name.upper()}__BASE_URL="
            "http://127.0.0.1:8000/v1"
        )
    extra_body = config.options.get("extra_body", {})
    if not isinstance(extra_body, dict):
        raise ConfigurationError(f"provider {name!r}: options.extra_body must be a mapping")
    return OpenAICompatProvider(
        name,
        base_url=config.base_url,
        api_key=config.api_key,
        model=config.model,
        timeout_s=config.timeout_s,
        connect_timeout_s=config.connect_timeout_s,
        max_concurrency=config.max_concurrency,
        images=bool(config.options.get("images", False)),
        extra_body=extra_body,
    )
