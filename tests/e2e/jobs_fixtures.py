"""Shared pieces of the async-jobs end-to-end tests: real processes, real databases.

- :class:`FakeLLM`: ``python -m copydesk.testing.fake_llm`` as a subprocess (a real HTTP
  chat-completions server), steered through ``/_control`` and read through ``/_stats``.
- :func:`fresh_postgres`: a brand-new PostgreSQL *database* ``t_<hex>`` for one test,
  dropped afterwards (``WITH (FORCE)``, so a killed process's connections do not keep it).
- :class:`Deployment`: the embedded default (``copydesk serve`` on SQLite, in-process
  workers) or the scale-out (``serve --no-workers`` on PostgreSQL plus ``copydesk worker``
  processes on the PgQueuer engine), with helpers to kill, restart and inspect it.
- The ``deployments`` and ``fake_llm`` fixtures start them for one test and always stop
  them (SIGTERM, then SIGKILL) and drop their databases, also when the test fails. A
  deployment whose environment configures the provider ``fake`` also gets ``FAKE_AGENT``.

A test module imports the fixture functions it uses (``deployments_fixture``,
``fake_llm_fixture``); they register the fixtures ``deployments`` and ``fake_llm``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import httpx
import pytest

from tests.conftest import PG_HOST, PG_PORT, require_service
from tests.e2e.conftest import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    CopydeskServer,
    ListeningProcess,
    clean_env,
    write_agent,
)

T = TypeVar("T")

Kind = Literal["embedded", "scaleout"]
KINDS: list[Any] = [
    pytest.param("embedded", id="embedded"),
    pytest.param("scaleout", id="scaleout", marks=pytest.mark.postgres),
]

FAKE_PREFIX = "FAKE_LLM_LISTENING"
WORKER_PREFIX = "COPYDESK_WORKER"
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"

#: The agent the job tests run against the fake LLM (provider ``fake``).
FAKE_AGENT_ID = "3c9d1e7a-5b2f-4a86-9d0c-7e1f2a3b4c5d"
FAKE_AGENT = f"""\
id: {FAKE_AGENT_ID}
name: Fake-backed writer
description: One short piece of copy per topic, written by the provider named "fake".
inputs:
  - name: topic
    input_type: text
    required: true
    options:
      min_fields: 1
      max_fields: 1
prompt: |
  Write one line about {{{{ topic }}}}
output:
  title: Copy
model:
  provider: fake
parameters:
  max_tokens: 40
"""


def topic(value: str) -> list[dict[str, Any]]:
    """Inputs of one job of the fake-backed agent."""
    return [{"id": "topic", "value": [value]}]


def blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, inside or outside an event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- processes --------------------------------------------------------------------------


def sigkill(process: ListeningProcess) -> None:
    """SIGKILL a running process (a crash: no shutdown code runs), then reap it."""
    running = process._process
    assert running is not None, "the process was never started"
    assert running.poll() is None, "the process is not running"
    running.kill()
    running.wait(STOP_TIMEOUT_S)
    process.stop()  # already dead: only joins the output reader


class FakeLLM:
    """The fake chat-completions server as a subprocess."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "copydesk.testing.fake_llm", "--port", "0", *args]
        self.process = ListeningProcess(command, clean_env(), FAKE_PREFIX)

    def start(self) -> FakeLLM:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    @property
    def url(self) -> str:
        assert self.process.url, "the fake LLM server is not running"
        return self.process.url

    @property
    def base_url(self) -> str:
        """What the ``openai`` provider kind takes: ``http://HOST:PORT/v1``."""
        return self.url + "/v1"

    def control(self, **changes: Any) -> dict[str, Any]:
        response = httpx.post(self.url + "/_control", json=changes, timeout=10)
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config

    def stats(self, window_s: float = 60.0, arrivals: bool = True) -> dict[str, Any]:
        params = {"window_s": str(window_s), "arrivals": "1" if arrivals else "0"}
        response = httpx.get(self.url + "/_stats", params=params, timeout=30)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def reset(self) -> None:
        httpx.post(self.url + "/_stats/reset", timeout=10).raise_for_status()

    def provider_env(self, name: str = "FAKE", **settings: Any) -> dict[str, str]:
        """``COPYDESK_PROVIDERS__<NAME>__*`` for an ``openai`` provider pointed here."""
        env = {
            f"COPYDESK_PROVIDERS__{name}__KIND": "openai",
            f"COPYDESK_PROVIDERS__{name}__BASE_URL": self.base_url,
            f"COPYDESK_PROVIDERS__{name}__MODEL": "fake-llm",
        }
        for key, value in settings.items():
            env[f"COPYDESK_PROVIDERS__{name}__{key.upper()}"] = str(value)
        return env


# --- PostgreSQL ---------------------------------------------------------------------------


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; its SQLAlchemy URL. Dropped after."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"t_{uuid.uuid4().hex}"
    blocking(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        blocking(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- deployments ----------------------------------------------------------------------------


@dataclass
class Deployment:
    """One Copydesk deployment under test (see the module docstring)."""

    kind: Kind
    server: CopydeskServer
    env: dict[str, str]
    database_url: str | None
    workers: list[ListeningProcess] = field(default_factory=list)

    def start(self, workers: bool = True) -> Deployment:
        self.server.start()  # migrates (and installs PgQueuer's schema) before workers race
        if workers:
            self.start_workers()
        return self

    def start_workers(self) -> None:
        for worker in self.workers:
            if worker.returncode is None and worker.url is None:
                worker.start(START_TIMEOUT_S)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()

    def add_worker(self) -> ListeningProcess:
        worker = ListeningProcess(
            [sys.executable, "-m", "copydesk", "worker"], self.server.env, WORKER_PREFIX
        )
        self.workers.append(worker)
        return worker

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def key(self) -> str:
        return self.server.key

    @property
    def output(self) -> str:
        parts = [f"--- serve ---\n{self.server.output}"]
        parts += [f"--- worker {i} ---\n{w.output}" for i, w in enumerate(self.workers)]
        return "\n".join(parts)

    # --- the database, read directly --------------------------------------------------

    @property
    def sqlite_path(self) -> Path:
        return self.server.data_dir / "copydesk.db"

    async def arows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, straight from the deployment's database."""
        if self.database_url is None:
            return await asyncio.to_thread(self._sqlite_rows, sql, *args)
        dsn = "postgresql://" + self.database_url.split("://", 1)[1]
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(_pg_placeholders(sql), *args)]
        finally:
            await conn.close()

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return blocking(self.arows(sql, *args))

    def _sqlite_rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        uri = f"file:{self.sqlite_path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            return [tuple(r) for r in db.execute(sql, args).fetchall()]


def _pg_placeholders(sql: str) -> str:
    """``?`` placeholders (SQLite) become ``$1..$n`` (asyncpg), left to right."""
    out, n = [], 0
    for char in sql:
        if char == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(char)
    return "".join(out)


DeployFactory = Callable[..., Deployment]


@pytest.fixture(name="deployments")
def deployments_fixture(tmp_path: Path) -> Iterator[DeployFactory]:
    """``deploy(kind, env=..., workers=1, agents=...)`` starts a deployment for this test
    (``start_workers=False``: the server only; ``Deployment.start_workers()`` later;
    ``serve_workers``: whether ``serve`` runs workers, by default only when embedded).

    Every deployment gets its own data dir and, for ``scaleout``, its own PostgreSQL
    database. Teardown stops every process (SIGTERM, then SIGKILL) and drops the database.
    """
    started: list[Deployment] = []
    databases = ExitStack()
    agents_dir = write_agent(tmp_path / "agents", "fake.yaml", FAKE_AGENT).parent

    def deploy(
        kind: Kind,
        *,
        env: dict[str, str] | None = None,
        workers: int = 1,
        agents: Sequence[Path] = (),
        start_workers: bool = True,
        serve_workers: bool | None = None,
    ) -> Deployment:
        index = len(started)
        extra = {
            # A SIGTERMed process finishes quickly; the default 30 s outlasts the stop wait.
            "COPYDESK_SHUTDOWN_GRACE_S": "2",
            "COPYDESK_LOG_LEVEL": "warning",
        }
        database_url: str | None = None
        if kind == "scaleout":
            database_url = databases.enter_context(fresh_postgres())
            extra["COPYDESK_DATABASE_URL"] = database_url
            extra["COPYDESK_ENGINE"] = "pgqueuer"
        extra.update(env or {})
        if "COPYDESK_PROVIDERS__FAKE__KIND" in extra:  # the fake-backed agent needs it
            agents = [*agents, agents_dir]
        server = CopydeskServer(tmp_path / f"deployment-{index}" / "data", agents=agents, env=extra)
        deployment = Deployment(kind, server, server.env, database_url)
        if not (kind == "embedded" if serve_workers is None else serve_workers):
            server.process.command.append("--no-workers")
        if kind == "scaleout":
            for _ in range(workers):
                deployment.add_worker()
        started.append(deployment)
        return deployment.start(workers=start_workers)

    try:
        yield deploy
    finally:
        for deployment in reversed(started):
            deployment.stop()
            # Shown with a failed test's captured output: what the processes complained of.
            complaints = [
                line
                for line in deployment.output.splitlines()
                if line.startswith(("ERROR", "CRITICAL", "---")) or "Traceback" in line
            ]
            if len(complaints) > len(deployment.workers) + 1:
                print(f"[{deployment.kind}] process errors:\n" + "\n".join(complaints[:60]))
        databases.close()


@pytest.fixture(name="fake_llm")
def fake_llm_fixture() -> Iterator[Callable[..., FakeLLM]]:
    """``fake_llm("--latency", "0.2")`` starts a fake LLM server for this test."""
    started: list[FakeLLM] = []

    def start(*args: str) -> FakeLLM:
        server = FakeLLM(*args)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


# --- waiting and submitting -------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> float:
    """Poll ``check`` until true; the seconds it took. Fails the test after ``timeout_s``."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            detail = on_timeout() if on_timeout else ""
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}\n{detail}")
        await asyncio.sleep(interval_s)


async def submit_jobs(
    url: str,
    key: str,
    app_id: str,
    inputs: Sequence[list[dict[str, Any]]],
    concurrency: int = 50,
) -> list[dict[str, Any]]:
    """POST one job per ``inputs`` item, ``concurrency`` at a time; the 202 bodies, in order."""
    results: list[dict[str, Any] | None] = [None] * len(inputs)
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def feeder() -> None:
            nonlocal next_index
            while next_index < len(inputs):
                index, next_index = next_index, next_index + 1
                response = await client.post(
                    f"/v1/applications/{app_id}/jobs", json={"inputs": inputs[index]}
                )
                assert response.status_code == 202, (response.status_code, response.text)
                results[index] = response.json()

        await asyncio.gather(*(feeder() for _ in range(concurrency)))
    return [r for r in results if r is not None]
