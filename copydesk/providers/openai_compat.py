"""A provider for any server speaking OpenAI's chat-completions protocol.

vLLM, Ollama, the llama.cpp server, LiteLLM and OpenAI itself all accept
``POST {base_url}/chat/completions``. This adapter sends one request per generation
through one pooled ``aiohttp.ClientSession`` (opened in ``open()``, closed in ``close()``;
its connector holds at most ``max_concurrency`` connections, kept alive between calls),
reads JSON answers or Server-Sent Events streams, and classifies every failure as one of
the ``ProviderError`` subclasses so the job engine can decide between retry and fail:

* 429 -> ``ProviderRateLimited`` (``retry_after_s`` from ``retry-after-ms`` or
  ``Retry-After``, seconds or HTTP-date);
* 408, 409, 5xx, refused or reset connections, malformed answers -> ``ProviderUnavailable``;
* timeouts -> ``ProviderTimeout``;
* any other 4xx, and 3xx (redirects are not followed) -> ``ProviderRejected``, with the
  server's own message.

Timeouts: ``connect_timeout_s`` to open a connection, ``timeout_s`` between two reads, and
``timeout_s`` for a whole ``generate()`` answer, counted once a slot is free. A call that is
cancelled closes its connection at once, so the server sees the client go.

Like httpx, which this module used before, it honours ``HTTP_PROXY``/``HTTPS_PROXY``/
``NO_PROXY`` (read once, in ``open()``) and verifies TLS against ``SSL_CERT_FILE``,
``SSL_CERT_DIR`` or certifi's bundle.

Options (``ProviderSettings.options``): ``images`` (bool, the model accepts image parts)
and ``extra_body`` (a mapping merged into every request body, e.g. ``{"top_k": 20}``).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

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
#: idle connections are closed after this long (httpx's default, below most servers' own)
_KEEPALIVE_S = 5.0
_SSE_HEADERS = {"Accept": "text/event-stream"}
#: Server-Sent Events end lines with CR LF, LF or CR
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


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


def _error_detail(text: str, reason: str | None) -> str:
    """The server's own words: OpenAI's ``{"error": {"message"}}``, Ollama's, FastAPI's."""
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
        return reason or "no details"
    return text[:_ERROR_TEXT_LIMIT]


def _encoding(charset: str | None) -> str:
    """The body's text encoding: the declared charset when Python knows it, else UTF-8."""
    if charset:
        try:
            return codecs.lookup(charset).name
        except LookupError:
            pass
    return "utf-8"


def _text(body: bytes, response: aiohttp.ClientResponse) -> str:
    return body.decode(_encoding(response.charset), errors="replace")


async def _lines(response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
    """The body's lines as they arrive, without their CR LF, LF or CR."""
    decoder = codecs.getincrementaldecoder(_encoding(response.charset))(errors="replace")
    buffer = ""
    async for chunk in response.content.iter_any():
        buffer += decoder.decode(chunk)
        start = 0
        for match in _LINE_BREAK.finditer(buffer):
            if match.end() == len(buffer) and match.group() == "\r":
                break  # perhaps the first half of CR LF: wait for the next chunk
            yield buffer[start : match.start()]
            start = match.end()
        buffer = buffer[start:]
    buffer += decoder.decode(b"", final=True)
    start = 0
    for match in _LINE_BREAK.finditer(buffer):
        yield buffer[start : match.start()]
        start = match.end()
    if start < len(buffer):
        yield buffer[start:]


def _failure_name(exc: aiohttp.ClientError) -> str:
    """The kind of transport failure, named as httpx named it (logs and alerts match these)."""
    if isinstance(exc, aiohttp.ServerTimeoutError):  # ConnectionTimeoutError from aiohttp 3.10
        return "ConnectTimeout" if str(exc).startswith("Connection timeout") else "ReadTimeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "RemoteProtocolError"
    if isinstance(exc, aiohttp.ClientOSError):
        return "ReadError"
    return type(exc).__name__


def _ssl_context() -> ssl.SSLContext:
    """Certificates as httpx found them: ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, else certifi."""
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    if capath := os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=capath)
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx, still a dependency, brings it
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


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
        self._session: aiohttp.ClientSession | None = None
        # Admits max_concurrency calls, as many as the connector has connections, so a
        # call never waits inside aiohttp for one and generate()'s deadline starts here.
        self._slots: asyncio.Semaphore | None = None
        self._target = URL()  # self.url, parsed in open()
        self._proxy: URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None

    async def open(self) -> None:
        if self._session is not None:
            return
        try:
            self._target = URL(self.url)
        except ValueError as exc:
            raise ConfigurationError(
                f"provider {self.name!r}: base_url is not a valid address: {exc}"
            ) from exc
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            self._proxy, self._proxy_auth = get_env_proxy_for_url(self._target)
        except LookupError:
            self._proxy, self._proxy_auth = None, None
        connector = aiohttp.TCPConnector(
            limit=self._max_concurrency,
            limit_per_host=self._max_concurrency,
            keepalive_timeout=_KEEPALIVE_S,
            ssl=_ssl_context() if self._target.scheme == "https" else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            # between bytes: timeout_s; no total (generate() keeps its own deadline) and
            # no limit on waiting for a pooled connection (``_slots`` admits no more calls
            # than there are connections).
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout_s, sock_read=self._timeout_s
            ),
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # httpx kept cookies from any host
        )
        self._slots = asyncio.Semaphore(self._max_concurrency)

    async def close(self) -> None:
        session, self._session, self._slots = self._session, None, None
        if session is not None:
            await session.close()

    async def generate(self, request: GenerationRequest) -> Generation:
        session, slots = self._opened()
        payload = self._encode(self._body(request, stream=False))
        started = time.perf_counter()
        async with slots:
            try:
                async with (
                    asyncio.timeout(self._timeout_s),  # the whole answer, not per read
                    self._post(session, payload) as response,
                ):
                    body = await response.read()
            except aiohttp.ClientError as exc:
                raise self._transport_error(exc) from exc
            except TimeoutError as exc:
                raise ProviderTimeout(
                    self.name, f"no answer from {self.url} within {self._timeout_s:g}s"
                ) from exc
        self._check_status(response, body)
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = _message_text(choice["message"].get("content"))
            finish_reason = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderUnavailable(
                self.name, f"malformed answer from {self.url}: {_text(body, response)[:200]!r}"
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
        session, slots = self._opened()
        payload = self._encode(self._body(request, stream=True))
        model = request.model or self.model or "unknown"
        usage: Usage | None = None
        finish_reason: str | None = None
        deltas = 0
        done = False
        async with slots:
            try:
                async with self._post(session, payload, _SSE_HEADERS) as response:
                    if not 200 <= response.status < 300:
                        self._check_status(response, await response.read())
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
            except aiohttp.ClientError as exc:
                raise self._transport_error(exc) from exc
        if not done and finish_reason is None:
            raise ProviderUnavailable(self.name, f"the stream from {self.url} ended early")
        yield StreamEnd(
            usage=usage if usage is not None else Usage(0, deltas),
            model=model,
            finish_reason=finish_reason,
        )

    # --- helpers ---------------------------------------------------------------------

    def _opened(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._slots is None:
            raise RuntimeError(f"provider {self.name!r} is not open; call open() first")
        return self._session, self._slots

    def _post(
        self,
        session: aiohttp.ClientSession,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return session.post(
            self._target,
            data=payload,
            headers=headers,
            allow_redirects=False,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        )

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

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        """Compact UTF-8 JSON; NaN and infinities raise ValueError (they are not JSON)."""
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()

    async def _sse_data(self, response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
        """The ``data`` of each Server-Sent Event (multi-line data joined by newlines)."""
        lines: list[str] = []
        async with aclosing(_lines(response)) as stream:
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

    def _check_status(self, response: aiohttp.ClientResponse, body: bytes) -> None:
        """Anything but 2xx is an error: 3xx too, as redirects are not followed."""
        status = response.status
        if 200 <= status < 300:
            return
        cause = aiohttp.ClientResponseError(
            response.request_info,
            response.history,
            status=status,
            message=response.reason or "",
            headers=response.headers,
        )
        detail = _error_detail(_text(body, response), response.reason)
        message = f"HTTP {status} from {self.url}: {detail}"
        if status == 429:
            retry_after = retry_after_seconds(response.headers)
            raise ProviderRateLimited(self.name, message, retry_after) from cause
        if status in (408, 409) or status >= 500:
            retry_after = retry_after_seconds(response.headers)
            raise ProviderUnavailable(self.name, message, retry_after) from cause
        raise ProviderRejected(self.name, message) from cause

    def _transport_error(self, exc: aiohttp.ClientError) -> ProviderError:
        message = f"{_failure_name(exc)} talking to {self.url}: {str(exc) or type(exc).__name__}"
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return ProviderTimeout(self.name, message)
        return ProviderUnavailable(self.name, message)


_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _flag(value: object) -> bool:
    """A boolean option, also when it came from the environment as text ("false")."""
    return value if isinstance(value, bool) else _FLAGS[str(value).lower()]


def create(name: str, config: ProviderSettings, settings: Settings) -> OpenAICompatProvider:
    del settings
    if not config.base_url or not config.base_url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"provider {name!r} (kind openai) needs base_url, the address that ends before "
            f"/chat/completions, e.g. COPYDESK_PROVIDERS__{name.upper()}__BASE_URL="
            "http://127.0.0.1:8000/v1"
        )
    images = config.options.get("images", False)
    if not isinstance(images, bool) and str(images).lower() not in _FLAGS:
        raise ConfigurationError(f"provider {name!r}: options.images must be true or false")
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
        images=_flag(config.options.get("images", False)),
        extra_body=extra_body,
    )
