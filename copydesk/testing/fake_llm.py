"""A fake LLM server speaking OpenAI's chat-completions protocol, for tests and benchmarks.

A real HTTP/1.1 server on plain asyncio (a ``Protocol`` and a small request parser with
keep-alive and ``Content-Length`` bodies), light enough for thousands of concurrent slow
requests from one process. It answers ``POST /v1/chat/completions`` (JSON, or Server-Sent
Events with ``stream_options.include_usage``) and ``GET /v1/models`` with deterministic
text (``"Echo: "`` and the first words of the last user message; tokens are words), after a
configurable latency, and injects failures on demand.

Behaviour (``FakeLLMConfig``) is set at start and changed at run time with
``POST /_control`` (a JSON object of the fields to change; ``GET /_control`` reads them):

* ``latency_s``, ``jitter_s``: wait ``latency_s + uniform(0, jitter_s)`` before answering;
  a stream spreads the wait over its chunks. Injected errors answer at once.
* ``rate_429``, ``rate_500``, ``rate_stall`` (fractions, drawn with ``seed``): answer 429
  with ``Retry-After: <retry_after_s>``, answer 500, or hold the request ``stall_s`` seconds
  before answering normally.
* ``script``: a list applied in order to successive chat requests before the random mode:
  ``"ok"``, ``"stall"``, ``"drop"`` (close the connection without an answer), ``"garbage"``
  (a 200 whose JSON body is cut short) or an HTTP status ``"400"``..``"599"`` answered with
  an OpenAI error body (429 and 503 carry ``Retry-After``).
* ``reject_400_if_contains``: a 400 with an OpenAI error body when the prompt contains it.
* ``model`` (the default model name), ``answer_words`` (how many prompt words are echoed).

``GET /_stats`` (query ``window_s``, default 60, and ``arrivals=0`` to leave the list out)
reports counts since start or ``POST /_stats/reset``; see ``FakeLLMStats.as_json``.

Run it as ``python -m copydesk.testing.fake_llm --port 0 --latency 0.2``; it prints
``FAKE_LLM_LISTENING http://127.0.0.1:PORT`` once ready. In-process::

    async with FakeLLMServer(FakeLLMConfig(latency_s=0.1)) as server:
        server.base_url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs

LISTENING_PREFIX = "FAKE_LLM_LISTENING"

_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024
_ACTIONS = ("ok", "stall", "drop", "garbage")


# --- behaviour -----------------------------------------------------------------------


def _number(key: str, value: object, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, not {value!r}")
    if value < 0 or (high is not None and value > high):
        limit = f"between 0 and {high:g}" if high is not None else "0 or more"
        raise ValueError(f"{key} must be {limit}, not {value!r}")
    return float(value)


def _script_token(value: object) -> str:
    token = str(value).strip().lower() if isinstance(value, str | int) else ""
    if token in _ACTIONS or (token.isdigit() and 400 <= int(token) <= 599):
        return token
    raise ValueError(
        f"script entries are 'ok', 'stall', 'drop', 'garbage' or a status 400-599, not {value!r}"
    )


@dataclass
class FakeLLMConfig:
    """How the fake answers. ``update`` validates a partial change, all or nothing."""

    latency_s: float = 0.0
    jitter_s: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_stall: float = 0.0
    retry_after_s: float = 1.0
    stall_s: float = 30.0
    script: list[str] = field(default_factory=list)
    seed: int | None = None
    reject_400_if_contains: str | None = None
    model: str = "fake-llm"
    answer_words: int = 12

    def __post_init__(self) -> None:
        self.update(asdict(self))

    def update(self, changes: Mapping[str, object]) -> None:
        values: dict[str, object] = {}
        problems: list[str] = []
        for key, value in changes.items():
            try:
                values[key] = self._checked(key, value)
            except ValueError as exc:
                problems.append(str(exc))
        merged = [
            values.get(key, getattr(self, key)) for key in ("rate_429", "rate_500", "rate_stall")
        ]
        rates = sum(float(rate) for rate in merged if isinstance(rate, int | float))
        if rates > 1.0 + 1e-9:
            problems.append(f"rate_429 + rate_500 + rate_stall must be at most 1, not {rates:g}")
        if problems:
            raise ValueError("; ".join(problems))
        for key, value in values.items():
            setattr(self, key, value)

    @staticmethod
    def _checked(key: str, value: object) -> object:
        if key in ("latency_s", "jitter_s", "retry_after_s", "stall_s"):
            return _number(key, value)
        if key in ("rate_429", "rate_500", "rate_stall"):
            return _number(key, value, high=1.0)
        if key == "script":
            if not isinstance(value, list | tuple):
                raise ValueError(f"script must be a list, not {value!r}")
            return [_script_token(item) for item in value]
        if key == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"seed must be an integer or null, not {value!r}")
            return value
        if key == "reject_400_if_contains":
            if value is not None and not isinstance(value, str):
                raise ValueError(f"reject_400_if_contains must be a string or null, not {value!r}")
            return value or None
        if key == "model":
            if not isinstance(value, str) or not value:
                raise ValueError(f"model must be a non-empty string, not {value!r}")
            return value
        if key == "answer_words":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"answer_words must be an integer of 1 or more, not {value!r}")
            return value
        raise ValueError(f"unknown setting {key!r}")

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- counters ------------------------------------------------------------------------


class FakeLLMStats:
    """What the fake saw. Counts cover chat-completion requests only."""

    def __init__(self, max_arrivals: int = 100_000) -> None:
        self.in_flight = 0
        self.connections_open = 0
        self._max_arrivals = max_arrivals
        self.reset()

    def reset(self) -> None:
        self.started_at = time.time()
        self.requests_total = 0
        self.peak_in_flight = self.in_flight
        self.status_counts: Counter[int] = Counter()
        self.disconnects = 0
        self.stalls = 0
        self.drops = 0
        self.streams = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.connections_total = 0
        self.arrivals: deque[float] = deque(maxlen=self._max_arrivals)
        self.last_request: dict[str, Any] | None = None

    def arrived(self) -> None:
        self.requests_total += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.arrivals.append(time.time())

    def max_in_window(self, window_s: float) -> int:
        """Most arrivals inside any sliding window of ``window_s`` seconds."""
        best = 0
        times = list(self.arrivals)
        first = 0
        for last, stamp in enumerate(times):
            while stamp - times[first] >= window_s:
                first += 1
            best = max(best, last - first + 1)
        return best

    def window_counts(self, window_s: float) -> list[int]:
        """Arrivals per fixed window of ``window_s`` seconds, counted from the reset."""
        counts = [0] * (int((time.time() - self.started_at) // window_s) + 1)
        for stamp in self.arrivals:
            index = int((stamp - self.started_at) // window_s)
            if 0 <= index < len(counts):
                counts[index] += 1
        return counts

    def as_json(self, window_s: float = 60.0, arrivals: bool = True) -> dict[str, Any]:
        now = time.time()
        report: dict[str, Any] = {
            "started_at": self.started_at,
            "now": now,
            "uptime_s": now - self.started_at,
            "requests_total": self.requests_total,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "disconnects": self.disconnects,
            "stalls": self.stalls,
            "drops": self.drops,
            "streams": self.streams,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "window_s": window_s,
            "window_counts": self.window_counts(window_s),
            "max_in_window": self.max_in_window(window_s),
            "arrivals_dropped": self.requests_total - len(self.arrivals),
            "last_request": self.last_request,
        }
        if arrivals:
            report["arrivals"] = list(self.arrivals)
        return report


# --- HTTP/1.1 ------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def _parse_request(buffer: bytearray) -> tuple[_Request, int] | None:
    """One complete request from the front of ``buffer`` and its size, or None for more."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > _MAX_HEAD_BYTES:
            raise _BadRequest(431, "request head too large")
        return None
    lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, f"malformed header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(501, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "malformed Content-Length") from None
    if length < 0 or length > _MAX_BODY_BYTES:
        raise _BadRequest(413, f"body of {length} bytes is not accepted")
    end = head_end + 4 + length
    if len(buffer) < end:
        return None
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    path, _, query = target.partition("?")
    request = _Request(
        method=method,
        path=path,
        query=parse_qs(query),
        headers=headers,
        body=bytes(buffer[head_end + 4 : end]),
        keep_alive=keep_alive,
    )
    return request, end


def _head(status: int, headers: Sequence[tuple[str, str]], keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", "Server: copydesk-fake-llm"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _sse_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body carrying one Server-Sent Event."""
    event = b"data: " + data + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


class _Connection(asyncio.Protocol):
    """One client connection: requests are served one at a time, in order."""

    def __init__(self, server: FakeLLMServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._continue_sent = False
        self._writable = asyncio.Event()
        self._writable.set()
        #: a chat request is waiting for, or in the middle of, its answer
        self.answering = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server._connections.add(self)
        self._server.stats.connections_total += 1
        self._server.stats.connections_open += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._next()

    def eof_received(self) -> bool:
        self._lost()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()
        self._writable.set()
        if self in self._server._connections:
            self._server._connections.discard(self)
            self._server.stats.connections_open -= 1

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # used by the server

    def write(self, data: bytes) -> None:
        if not self._closed and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def drop(self) -> None:
        """Close without answering; not counted as the client's disconnect."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> asyncio.Task[None] | None:
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
        if self._transport is not None:
            self._transport.abort()
        return task

    # internals

    def _lost(self) -> None:
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            if self.answering and not self._server._stopping:
                self._server.stats.disconnects += 1
            task.cancel()

    def _next(self) -> None:
        if self._closed:
            return
        try:
            parsed = _parse_request(self._buffer)
        except _BadRequest as exc:
            self._buffer.clear()
            body = json.dumps({"error": {"message": exc.message, "type": "invalid_request"}})
            self.write(_head(exc.status, _json_headers(len(body)), keep_alive=False))
            self.write(body.encode())
            self.drop()
            return
        if parsed is None:
            if (
                not self._continue_sent
                and b"\r\n\r\n" in self._buffer
                and b"100-continue" in self._buffer.lower()
            ):
                self._continue_sent = True
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        request, size = parsed
        del self._buffer[:size]
        self._continue_sent = False
        self._task = asyncio.get_running_loop().create_task(self._serve(request))

    async def _serve(self, request: _Request) -> None:
        try:
            await self._server._handle(self, request)
        except Exception as exc:  # a bug in the fake: say so, loudly, and hang up
            body = json.dumps({"error": {"message": f"fake LLM failed: {exc!r}"}})
            self.write(_head(500, _json_headers(len(body)), keep_alive=False))
            self.write(body.encode())
            self.drop()
            return
        finally:
            self._task = None
        if not request.keep_alive:
            self.drop()
        elif self._buffer:
            self._next()


def _json_headers(length: int, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [("Content-Type", "application/json"), ("Content-Length", str(length)), *extra]


# --- the server ----------------------------------------------------------------------


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of each message; image parts carry no text."""
    found: list[tuple[str, str]] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        else:
            text = ""
        found.append((str(message.get("role", "")), text))
    return found


def _chat_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise _BadRequest(400, "the request body must be a JSON object")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(400, "each message must be an object with a 'role'")
        if not isinstance(message.get("content"), str | list | None):
            raise _BadRequest(400, "'content' must be a string or a list of parts")
    for key in ("max_tokens", "max_completion_tokens"):
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _BadRequest(400, f"'{key}' must be an integer")
        if isinstance(value, int) and value < 1:
            raise _BadRequest(400, f"'{key}' must be at least 1")
    if not isinstance(payload.get("stream", False), bool):
        raise _BadRequest(400, "'stream' must be a boolean")
    return payload


class FakeLLMServer:
    """The fake, listening on ``host:port`` (port 0 picks a free one) between start and stop."""

    def __init__(
        self,
        config: FakeLLMConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_arrivals: int = 100_000,
        backlog: int = 4096,
    ) -> None:
        self.config = config if config is not None else FakeLLMConfig()
        self.stats = FakeLLMStats(max_arrivals)
        self._host = host
        self._port = port
        self._backlog = backlog
        self._rng = random.Random(self.config.seed)
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._ids = itertools.count(1)

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the fake LLM server is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as its base URL: ``http://HOST:PORT/v1``."""
        return self.url + "/v1"

    def configure(self, **changes: object) -> None:
        """Change behaviour in-process, exactly as ``POST /_control`` does."""
        self.config.update(changes)
        if "seed" in changes:
            self._rng = random.Random(self.config.seed)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self._host, self._port, backlog=self._backlog
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        tasks = [task for conn in list(self._connections) if (task := conn.abort()) is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._bound_port = None

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- routing ---------------------------------------------------------------------

    async def _handle(self, conn: _Connection, request: _Request) -> None:
        routes: dict[str, dict[str, Callable[[_Request], tuple[int, object]]]] = {
            "/v1/models": {"GET": self._models},
            "/_stats": {"GET": self._stats},
            "/_stats/reset": {"POST": self._reset},
            "/_control": {"GET": self._control, "POST": self._control},
            "/health": {"GET": lambda _: (200, {"status": "ok"})},
        }
        path = request.path.rstrip("/") or "/"
        if path == "/v1/chat/completions":
            if request.method != "POST":
                self._send_error(conn, request, 405, "use POST", "invalid_request_error")
                return
            await self._chat(conn, request)
            return
        methods = routes.get(path)
        if methods is None:
            self._send_error(conn, request, 404, f"no route {path}", "invalid_request_error")
            return
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(methods)
            self._send_error(conn, request, 405, f"use {allowed}", "invalid_request_error")
            return
        try:
            status, payload = handler(request)
        except _BadRequest as exc:
            self._send_error(conn, request, exc.status, exc.message, "invalid_request_error")
            return
        self._send_json(conn, request, status, payload)

    def _models(self, request: _Request) -> tuple[int, object]:
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "fake"}
        return 200, {"object": "list", "data": [model]}

    def _stats(self, request: _Request) -> tuple[int, object]:
        try:
            window_s = float(request.query.get("window_s", ["60"])[0])
        except ValueError:
            raise _BadRequest(400, "window_s must be a number") from None
        if not 0.1 <= window_s <= 86_400:
            raise _BadRequest(400, "window_s must be between 0.1 and 86400")
        arrivals = request.query.get("arrivals", ["1"])[0] not in ("0", "false", "no")
        return 200, self.stats.as_json(window_s=window_s, arrivals=arrivals)

    def _reset(self, request: _Request) -> tuple[int, object]:
        self.stats.reset()
        return 200, self.stats.as_json()

    def _control(self, request: _Request) -> tuple[int, object]:
        if request.method == "POST":
            try:
                changes = json.loads(request.body or b"{}")
            except (ValueError, UnicodeDecodeError):
                raise _BadRequest(400, "the body must be a JSON object") from None
            if not isinstance(changes, dict):
                raise _BadRequest(400, "the body must be a JSON object")
            try:
                self.configure(**changes)
            except ValueError as exc:
                raise _BadRequest(400, str(exc)) from None
        return 200, self.config.as_json()

    # --- chat completions ------------------------------------------------------------

    async def _chat(self, conn: _Connection, request: _Request) -> None:
        self.stats.arrived()
        conn.answering = True
        try:
            await self._answer(conn, request)
        finally:
            conn.answering = False
            self.stats.in_flight -= 1

    def _decide(self, payload: dict[str, Any]) -> str:
        config = self.config
        scripted = bool(config.script)
        if scripted:
            action = config.script.pop(0)
            if action != "ok":
                return action
        needle = config.reject_400_if_contains
        if needle and any(needle in text for _, text in _texts(payload["messages"])):
            return "reject"
        if scripted:
            return "ok"
        draw = self._rng.random()
        for action, rate in (
            ("429", config.rate_429),
            ("500", config.rate_500),
            ("stall", config.rate_stall),
        ):
            if draw < rate:
                return action
            draw -= rate
        return "ok"

    async def _answer(self, conn: _Connection, request: _Request) -> None:
        config = self.config
        try:
            payload = _chat_payload(request.body)
        except _BadRequest as exc:
            self.stats.last_request = {"headers": request.headers, "body": None}
            self._send_error(conn, request, exc.status, exc.message, "invalid_request_error")
            return
        self.stats.last_request = {"headers": request.headers, "body": payload}
        action = self._decide(payload)
        if action == "drop":
            self.stats.drops += 1
            conn.answering = False
            conn.drop()
            return
        if action == "garbage":
            body = b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "cut sh'
            self.stats.status_counts[200] += 1
            conn.write(_head(200, _json_headers(len(body)), request.keep_alive) + body)
            return
        if action == "reject":
            message = f"the prompt contains {config.reject_400_if_contains!r}, which is refused"
            self._send_error(conn, request, 400, message, "invalid_request_error")
            return
        if action.isdigit():
            status = int(action)
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            message = f"injected {status} from the fake LLM server"
            self._send_error(conn, request, status, message, kind)
            return
        if action == "stall":
            self.stats.stalls += 1
            await asyncio.sleep(config.stall_s)
        delay = config.latency_s + (self._rng.uniform(0, config.jitter_s) if config.jitter_s else 0)
        if payload.get("stream"):
            await self._stream(conn, request, payload, delay)
        else:
            await self._complete(conn, request, payload, delay)

    def _words(self, payload: dict[str, Any]) -> tuple[list[str], int, str]:
        """The answer's words, the prompt's token count and the finish reason."""
        texts = _texts(payload["messages"])
        prompt_tokens = sum(len(text.split()) for _, text in texts)
        user = [text for role, text in texts if role == "user"]
        prompt = user[-1] if user else " ".join(text for _, text in texts)
        words = ["Echo:", *prompt.split()[: self.config.answer_words]]
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(words) > limit:
            words, finish = words[:limit], "length"
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += len(words)
        return words, prompt_tokens, finish

    async def _complete(
        self, conn: _Connection, request: _Request, payload: dict[str, Any], delay: float
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        words, prompt_tokens, finish = self._words(payload)
        answer = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model") or self.config.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            },
        }
        self._send_json(conn, request, 200, answer)

    async def _stream(
        self, conn: _Connection, request: _Request, payload: dict[str, Any], delay: float
    ) -> None:
        self.stats.streams += 1
        words, prompt_tokens, finish = self._words(payload)
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": payload.get("model") or self.config.model,
        }

        def event(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            chunk: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            return _sse_chunk(json.dumps(chunk).encode())

        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ]
        self.stats.status_counts[200] += 1
        conn.write(_head(200, headers, request.keep_alive))
        conn.write(event({"role": "assistant", "content": ""}))
        step = delay / max(1, len(words))
        for index, word in enumerate(words):
            if step > 0:
                await asyncio.sleep(step)
            await conn.drain()
            conn.write(event({"content": word if index == 0 else " " + word}))
        tail = event({}, finish)
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            }
            tail += _sse_chunk(json.dumps({**base, "choices": [], "usage": usage}).encode())
        conn.write(tail + _sse_chunk(b"[DONE]") + b"0\r\n\r\n")

    # --- replies ---------------------------------------------------------------------

    def _send_json(
        self, conn: _Connection, request: _Request, status: int, payload: object
    ) -> None:
        extra: list[tuple[str, str]] = []
        if status in (429, 503):
            extra.append(("Retry-After", f"{self.config.retry_after_s:g}"))
        body = json.dumps(payload).encode()
        if conn.answering:  # a chat request, counted by ``_chat``
            self.stats.status_counts[status] += 1
        conn.write(_head(status, _json_headers(len(body), extra), request.keep_alive) + body)

    def _send_error(
        self, conn: _Connection, request: _Request, status: int, message: str, kind: str
    ) -> None:
        error = {"message": message, "type": kind, "param": None, "code": kind}
        self._send_json(conn, request, status, {"error": error})


# --- command line ----------------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m copydesk.testing.fake_llm",
        description="A fake OpenAI-compatible LLM server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform(0, J) seconds")
    parser.add_argument("--rate-429", type=float, default=0.0, help="fraction answered 429")
    parser.add_argument("--rate-500", type=float, default=0.0, help="fraction answered 500")
    parser.add_argument("--rate-stall", type=float, default=0.0, help="fraction stalled")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds a stall lasts")
    parser.add_argument("--script", default="", help="comma-separated: ok,429,500,stall,...")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--reject-400-if-contains", default=None)
    parser.add_argument("--model", default="fake-llm")
    parser.add_argument("--answer-words", type=int, default=12)
    parser.add_argument("--max-arrivals", type=int, default=100_000)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop if installed")
    args = parser.parse_args(argv)
    try:
        args.config = FakeLLMConfig(
            latency_s=args.latency,
            jitter_s=args.jitter,
            rate_429=args.rate_429,
            rate_500=args.rate_500,
            rate_stall=args.rate_stall,
            retry_after_s=args.retry_after,
            stall_s=args.stall,
            script=[item for item in args.script.split(",") if item.strip()],
            seed=args.seed,
            reject_400_if_contains=args.reject_400_if_contains,
            model=args.model,
            answer_words=args.answer_words,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return args


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = FakeLLMServer(
        args.config, host=args.host, port=args.port, max_arrivals=args.max_arrivals
    )
    async with server:
        print(f"{LISTENING_PREFIX} {server.url}", flush=True)
        await stop.wait()


def _raise_open_files_limit() -> None:
    """Thousands of concurrent connections need thousands of file descriptors."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65_536 if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    _raise_open_files_limit()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
