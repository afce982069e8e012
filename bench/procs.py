"""Starting and stopping the real processes a benchmark drives (fake LLM, serve, worker)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Proc:
    """A child process whose output goes to a file (a pipe nobody drains would block it)."""

    popen: subprocess.Popen[str]
    log: Path
    lines: list[str] = field(default_factory=list)

    def read_lines(self) -> list[str]:
        self.lines = self.log.read_text(errors="replace").splitlines(keepends=True)
        return self.lines

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.read_lines():
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited: {''.join(self.lines[-30:])}")
            time.sleep(0.05)
        raise TimeoutError(f"no {prefix!r} line: {''.join(self.lines[-30:])}")

    def errors(self) -> list[str]:
        return [line for line in self.read_lines() if line.startswith(("ERROR", "WARNING"))]

    def line_after(self, marker: str) -> str:
        for index, line in enumerate(self.lines):
            if marker in line and index + 1 < len(self.lines):
                return self.lines[index + 1].strip()
        raise LookupError(marker)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(args: list[str], env: dict[str, str]) -> Proc:
    fd, name = tempfile.mkstemp(prefix="copydesk-bench-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        popen = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
    return Proc(popen, Path(name))


def copydesk(*args: str, env: dict[str, str], profile: str | None = None) -> Proc:
    """A ``copydesk`` process; with ``profile`` (an output path), under ``py-spy record``."""
    command = [sys.executable, "-m", "copydesk", *args]
    if profile:
        spy = str(Path(sys.executable).with_name("py-spy"))
        # ``.txt``: raw stacks with native frames (what bench/engines/hotspots.py reads).
        fmt = (
            ["--format", "raw", "--native"]
            if profile.endswith(".txt")
            else ["--format", "speedscope"]
        )
        command = [spy, "record", *fmt, "-o", profile, "--", *command]
    return spawn(command, env)


def fake_llm(*args: str) -> tuple[Proc, str]:
    proc = spawn([sys.executable, "-m", "copydesk.testing.fake_llm", "--port", "0", *args], {})
    return proc, proc.wait_for("FAKE_LLM_LISTENING ")


def _admin(statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    # In a thread of its own: callers may already be inside an event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks
