"""What every runner shares: the worker subprocess, the clock, CPU and memory readings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import psutil

if TYPE_CHECKING:
    from copydesk.store import Agent

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: The dedicated database every PostgreSQL runner drops and re-creates before its run.
PG_DB = "copydesk_bench"
PG_DSN = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
REDIS_URL = "redis://127.0.0.1:6379"
#: Jobs per bulk enqueue call (one transaction / pipeline / group).
CHUNK = 1000
#: How often the result store is asked how many jobs are done.
POLL_S = 0.05
READY = "BENCH_WORKER_READY"


@dataclass
class Worker:
    """The worker subprocess; its output goes to a file (a pipe nobody drains blocks)."""

    popen: subprocess.Popen[str]
    log: Path
    spy: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, marker: str = READY, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.output():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"worker exited {self.popen.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"worker never said {marker!r}: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return "".join(self.output().splitlines(keepends=True)[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.spy is not None and self.spy.poll() is None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.spy.wait(60)
            except subprocess.TimeoutExpired:
                self.spy.kill()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(args: list[str], env: dict[str, str] | None = None) -> Worker:
    fd, name = tempfile.mkstemp(prefix="copydesk-bench-worker-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        popen = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
    return Worker(popen, Path(name))


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def attach_profiler(worker: Worker, output: Path) -> None:
    """py-spy the worker (raw collapsed stacks, for speedscope or a flame graph tool)."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    log = open(worker.log.with_suffix(".spy.log"), "w")  # noqa: SIM115 - lives with the spy
    worker.spy = subprocess.Popen(
        [
            spy,
            "record",
            "--format",
            "raw",
            "--rate",
            "250",
            "--native",
            "-o",
            str(output),
            "--pid",
            str(worker.pid),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)  # let it attach before the clock starts


def _processes(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def machine_busy_s() -> float:
    """CPU seconds this machine has spent busy (every process, every core, including the
    database or broker server), since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the worker and its children (prefork pools)."""
    total = 0.0
    for proc in _processes(pid):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the worker plus its children, in MB."""
    total = 0.0
    for proc in _processes(pid):
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


async def reset_pg_database() -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{PG_DB}"')
    finally:
        await conn.close()


async def migrated_org(url: str) -> str:
    """Copydesk's schema at ``url`` (its migrations) and an organisation ``bench``: its id.
    For runners that write Copydesk's rows without Copydesk (the bounds)."""
    from copydesk.migrations import upgrade_to_head
    from copydesk.stores.sql import SQLStore

    store = SQLStore(url)
    await store.open()
    try:
        await upgrade_to_head(store.engine)
        return (await store.create_organization("bench")).id
    finally:
        await store.close()


def agent_from(path: Path) -> Agent:
    """The agent defined in ``path`` as deployed version 1, for building its requests with
    ``copydesk.generation.build_request``."""
    import yaml

    from copydesk.agents import parse_agent
    from copydesk.store import Agent

    spec = parse_agent(yaml.safe_load(path.read_text()), str(path))
    now = datetime.now(UTC)
    return Agent(spec.id or path.stem, "org", spec.name, "deployed", 1, spec, now, now, now)


class Runner(Protocol):
    """One job system. ``measure`` drives these in order."""

    name: str
    #: The worker's line that says it consumes (``READY`` unless the runner sets one).
    ready_marker: str
    #: What is fixed for comparability, and which API enqueues in bulk (for the report).
    notes: str

    async def reset(self) -> None:
        """Empty broker / database, create schemas; called before the worker starts."""

    def start_worker(self, concurrency: int) -> Worker:
        """Start the worker subprocess (``measure`` waits for its ready line)."""

    async def enqueue(self, count: int) -> None:
        """Enqueue ``count`` no-op jobs in chunks of :data:`CHUNK`."""

    async def completed(self) -> int:
        """How many jobs the result store has as completed."""

    async def close(self) -> None:
        """Close the producer-side connections."""


@dataclass
class Measurement:
    system: str
    jobs: int
    ok: bool
    seconds: float | None = None
    enqueue_s: float | None = None
    jobs_per_s: float | None = None
    worker_cpu_s: float | None = None
    worker_peak_rss_mb: float | None = None
    #: The whole machine's busy CPU time over the run, per job (the worker, its database
    #: or broker, this poller): what a job costs, wherever its work happens.
    machine_cpu_us_per_job: float | None = None
    #: Where that CPU went, per job: the worker process (and its children), this process
    #: (enqueueing and polling: the producer), and the rest of the machine (the database or
    #: broker server, mostly).
    worker_cpu_us_per_job: float | None = None
    producer_cpu_us_per_job: float | None = None
    server_cpu_us_per_job: float | None = None
    error: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


async def measure(
    runner: Runner,
    jobs: int,
    concurrency: int,
    *,
    profile: Path | None = None,
    timeout_s: float = 1800.0,
) -> Measurement:
    """Reset, start the worker, enqueue, and poll until every job is observed done."""
    worker: Worker | None = None
    try:
        await runner.reset()
        worker = runner.start_worker(concurrency)
        await asyncio.to_thread(worker.wait_ready, getattr(runner, "ready_marker", READY))
        if profile is not None:
            attach_profiler(worker, profile)
        cpu0 = cpu_s(worker.pid)
        busy0 = machine_busy_s()
        own0 = time.process_time()
        started = time.perf_counter()
        await runner.enqueue(jobs)
        enqueued = time.perf_counter()
        done = 0
        while True:
            done = await runner.completed()
            if done >= jobs:
                break
            if worker.popen.poll() is not None:
                raise RuntimeError(f"worker died after {done} jobs: {worker.tail()}")
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"{done}/{jobs} done after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)
        seconds = time.perf_counter() - started
        busy = machine_busy_s() - busy0
        cpu = cpu_s(worker.pid) - cpu0
        own = time.process_time() - own0
        rss = peak_rss_mb(worker.pid)
        return Measurement(
            system=runner.name,
            jobs=jobs,
            ok=True,
            seconds=round(seconds, 3),
            enqueue_s=round(enqueued - started, 3),
            jobs_per_s=round(jobs / seconds, 1),
            worker_cpu_s=round(cpu, 2),
            worker_peak_rss_mb=round(rss, 1),
            machine_cpu_us_per_job=round(busy / jobs * 1e6, 1),
            worker_cpu_us_per_job=round(cpu / jobs * 1e6, 1),
            producer_cpu_us_per_job=round(own / jobs * 1e6, 1),
            server_cpu_us_per_job=round(max(0.0, busy - cpu - own) / jobs * 1e6, 1),
            notes=runner.notes,
        )
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Measurement(runner.name, jobs, ok=False, error=detail[:2000], notes=runner.notes)
    finally:
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        try:
            await runner.close()
        except Exception as exc:
            print(f"  {runner.name}: closing failed: {exc}", file=sys.stderr)
