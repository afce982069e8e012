"""An HTTP client of a Copydesk server, for ``copydesk jobs``: batches and job control over
the API (the CLI's other commands open the database; these talk to a running server).

Errors in Writer's envelope become :class:`ServerError` with the server's descriptions;
a server that cannot be reached is :class:`ServerUnreachable`. aiohttp, as for the
providers: one session per client, closed with ``async with``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp

from copydesk.errors import CopydeskError

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: A batch body's Content-Type by the file's suffix.
CONTENT_TYPES = {
    ".csv": "text/csv",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".json": "application/json",
}
#: Seconds without a byte before a request (or the event stream: the server sends a
#: keep-alive comment every 15 s) is given up.
READ_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
#: Times the event stream is opened again after it ends without ``done``.
RECONNECTS = 5

ExportFormat = Literal["jsonl", "csv"]


class ServerError(CopydeskError):
    """The server answered with an error; ``descriptions`` are its envelope's items."""

    def __init__(self, status: int, descriptions: list[str]) -> None:
        super().__init__("; ".join(descriptions) or f"HTTP {status}")
        self.status = status
        self.descriptions = descriptions


class ServerUnreachable(CopydeskError):
    """No answer from the server (connection refused, DNS, time-out)."""


@dataclass(frozen=True)
class SseEvent:
    kind: str
    data: dict[str, Any]


def content_type(path: Path) -> str:
    """The Content-Type of a batch file, by its suffix (``ValueError`` for another)."""
    try:
        return CONTENT_TYPES[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{path.name}: a batch file is .csv, .jsonl (or .ndjson) or .json"
        ) from None


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class Client:
    """``async with Client(base_url, api_key) as client:`` then one method per call."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
            ),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- plumbing ------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with Client(...)`")
        return self._session

    async def _json(
        self, method: str, path: str, *, params: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        try:
            async with self.session.request(
                method, self.base_url + path, params=params, **kwargs
            ) as response:
                await _raise_for_status(response)
                return await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise ServerUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc
        except TimeoutError as exc:
            raise ServerUnreachable(f"{self.base_url}: no answer in time") from exc

    # --- applications --------------------------------------------------------------------

    async def resolve_agent(self, agent: str) -> str:
        """An application id as given, or the id of the one application named ``agent``."""
        if is_uuid(agent):
            return agent
        found: list[str] = []
        after: str | None = None
        while True:
            params = {"limit": "100", **({"after": after} if after else {})}
            page = await self._json("GET", "/v1/applications", params=params)
            found += [a["id"] for a in page["data"] if a.get("name", "").lower() == agent.lower()]
            if not page.get("has_more") or not page["data"]:
                break
            after = page["data"][-1]["id"]
        if len(found) != 1:
            reason = "no application" if not found else f"{len(found)} applications"
            raise ServerError(404, [f"{reason} named {agent!r}; give its id"])
        return found[0]

    # --- batches -------------------------------------------------------------------------

    async def submit_batch(
        self,
        agent_id: str,
        body: bytes,
        content_type: str,
        *,
        priority: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        params: dict[str, str] = {}
        if priority is not None:
            params["priority"] = str(priority)
        if dry_run:
            params["dry_run"] = "true"
        result: dict[str, Any] = await self._json(
            "POST",
            f"/v1/applications/{agent_id}/batches",
            params=params,
            data=body,
            headers={"Content-Type": content_type},
        )
        return result

    async def batch(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/v1/batches/{batch_id}")
        return result

    async def retry_batch(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", f"/v1/batches/{batch_id}/retry")
        return result

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", f"/v1/batches/{batch_id}/cancel")
        return result

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    async def results(self, batch_id: str, fmt: ExportFormat) -> AsyncIterator[bytes]:
        """The export, in row order, as the server streams it."""
        url = f"{self.base_url}/v1/batches/{batch_id}/results"
        try:
            async with self.session.get(url, params={"format": fmt}) as response:
                await _raise_for_status(response)
                async for chunk in response.content.iter_chunked(64 * 1024):
                    yield chunk
        except aiohttp.ClientError as exc:
            raise ServerUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc

    async def events(self, batch_id: str) -> AsyncIterator[SseEvent]:
        """The batch's server-sent events until ``done``. A stream that ends early is
        opened again (the server replays every row from the batch's start: rows already
        seen are skipped)."""
        seen: set[tuple[str, str]] = set()
        for _ in range(RECONNECTS + 1):
            async for event in self._event_stream(batch_id):
                if event.kind == "row":
                    key = (str(event.data.get("job_id")), str(event.data.get("status")))
                    if key in seen:
                        continue
                    seen.add(key)
                yield event
                if event.kind == "done":
                    return
        raise ServerUnreachable(f"{self.base_url}: the event stream kept ending early")

    async def _event_stream(self, batch_id: str) -> AsyncIterator[SseEvent]:
        url = f"{self.base_url}/v1/batches/{batch_id}/events"
        kind = "message"
        data: list[str] = []
        try:
            async with self.session.get(url) as response:
                await _raise_for_status(response)
                async for raw in response.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if not line:  # the end of one event
                        if data:
                            yield SseEvent(kind, json.loads("\n".join(data)))
                        kind, data = "message", []
                    elif line.startswith(":"):
                        continue  # keep-alive
                    elif line.startswith("event:"):
                        kind = line[len("event:") :].strip()
                    elif line.startswith("data:"):
                        data.append(line[len("data:") :].strip())
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError):
            return  # ended early: the caller opens it again
        except aiohttp.ClientError as exc:
            raise ServerUnreachable(f"{self.base_url}: {exc or type(exc).__name__}") from exc


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    text = await response.text()
    descriptions: list[str] = []
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for item in body.get("errors") or []:
            if isinstance(item, dict) and item.get("description"):
                descriptions.append(str(item["description"]))
        if not descriptions and isinstance(body.get("detail"), str):
            descriptions.append(body["detail"])
    if not descriptions:
        descriptions.append(f"HTTP {response.status} {response.reason or ''}".strip())
    raise ServerError(response.status, descriptions)
