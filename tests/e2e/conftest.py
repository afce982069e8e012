"""End-to-end fixtures: real ``copydesk serve`` processes, the CLI as a subprocess, and the
official ``writer-sdk`` clients pointed at them by ``base_url`` only.

Every server runs in its own data dir with a clean environment (no ``COPYDESK_*`` or
``WRITER_*`` variable of the caller leaks in). By default the "local" provider is the
deterministic one, so generated text is predictable; ``model_server`` runs the real
embedded model with a model cache kept across sessions.

Scopes: ``server`` is shared by a module (its tests add nothing another test reads),
``launch`` starts servers that live for one test (restarts, extra providers, isolation).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import writerai

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "agents"
PRODUCT_ID = "6f1c2a9e-3b7d-4c52-9a0e-5d8f1b2c3a41"  # examples/agents/product-description.yaml
SOCIAL_ID = "9a7e2c15-48b6-4d3f-8e1a-c2f5b7d90e36"  # examples/agents/social-post.yaml
ALT_TEXT_ID = "0d4b8e57-7a31-4f0c-b6a2-91e3c5d7f204"  # examples/agents/alt-text.yaml
SUMMARY_ID = "65539504-4cfe-4d60-96ea-c14f88c7e0a3"  # examples/agents/document-summary.yaml
#: A copy of the product description agent with max_tokens 32 (real-model streaming).
SHORT_PRODUCT_ID = "6f1c2a9e-3b7d-4c52-9a0e-00000000032a"

LISTENING = "COPYDESK_LISTENING"
KEY_HEADING = "API key for organisation"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 120.0

#: An agent exercising every input rule: a text input with 2..3 values, a dropdown, a file.
BRIEF_ID = "5b1e7c2a-0f3d-4a8e-9c61-2d7f4e8a9b10"
BRIEF_AGENT = f"""\
id: {BRIEF_ID}
name: Comparison brief
description: Compares two or three products for a chosen audience.
inputs:
  - name: products
    input_type: text
    required: true
    options:
      min_fields: 2
      max_fields: 3
  - name: audience
    input_type: dropdown
    required: true
    options:
      list: [Engineers, Buyers]
  - name: spec_sheet
    input_type: file
    required: false
    description: A spec sheet to draw on.
prompt: |
  Compare for {{{{ audience }}}}:
  {{% for p in products %}}- {{{{ p }}}}
  {{% endfor %}}
output:
  title: Comparison
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without COPYDESK_*/WRITER_* and colours, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COPYDESK_", "WRITER_")) and k not in ("FORCE_COLOR", "COLUMNS")
    }
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


def copydesk(
    env: dict[str, str], *args: str | Path, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``copydesk`` CLI as a subprocess; ``check`` fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "copydesk", *map(str, args)],
        env=env,
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"copydesk {' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result


def copydesk_in_process(
    env: dict[str, str], *args: str | Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the ``copydesk`` CLI in this process (typer's runner), with ``env`` laid over the
    environment: the same result as :func:`copydesk`, for commands that only talk to a
    server over HTTP, so their code is measured with the in-process tiers' coverage."""
    from typer.testing import CliRunner

    from copydesk.cli import cli

    overlay: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("COPYDESK_", "WRITER_"))
    }
    overlay.update(env)
    result = CliRunner().invoke(cli, [str(a) for a in args], env=overlay)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    completed = subprocess.CompletedProcess(
        ["copydesk", *map(str, args)], result.exit_code, result.stdout, result.stderr
    )
    if check and result.exit_code != 0:
        pytest.fail(
            f"copydesk {' '.join(map(str, args))} exited {result.exit_code}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return completed


class ListeningProcess:
    """A server subprocess that prints ``PREFIX URL`` once ready; its output is kept.

    ``start`` waits for that line (failing the test with the output if it never comes);
    ``stop`` sends SIGTERM, then SIGKILL if the process is still there, and reaps it.
    """

    def __init__(self, command: Sequence[str], env: dict[str, str], prefix: str) -> None:
        self.command = list(command)
        self.env = env
        self.prefix = prefix
        self.url: str | None = None
        self.lines: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        assert self._process is None, "already running"
        self.lines, self.url = [], None
        self._ready.clear()
        self._process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        ended = self._ready.wait(timeout_s) and self.url is None
        if self.url is None:
            try:  # it closed its output: it is exiting (or has), so its code is known
                code = self._process.wait(STOP_TIMEOUT_S) if ended else self._process.poll()
            except subprocess.TimeoutExpired:
                code = None
            self.stop()
            pytest.fail(
                f"{' '.join(self.command[1:])} did not print {self.prefix} within "
                f"{timeout_s:g}s (exit code {code}); its output:\n{self.output}",
                pytrace=False,
            )
        return self.url

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if self.url is None and line.startswith(self.prefix + " "):
                self.url = line[len(self.prefix) + 1 :].strip()
                self._ready.set()
        self._ready.set()  # EOF: the process ended before it was ready (start() says so)

    def stop(self) -> None:
        process, self._process = self._process, None
        self.url = None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


class CopydeskServer:
    """One ``copydesk serve --port 0`` subprocess over a data dir that outlives restarts."""

    def __init__(
        self,
        data_dir: Path,
        *,
        cache_dir: Path | None = None,
        agents: Sequence[Path] = (),
        env: dict[str, str] | None = None,
        deterministic: bool = True,
    ) -> None:
        self.data_dir = data_dir
        extra = {
            "COPYDESK_DATA_DIR": str(data_dir),
            "COPYDESK_CACHE_DIR": str(cache_dir or data_dir.parent / f"{data_dir.name}-cache"),
        }
        if deterministic:
            extra["COPYDESK_PROVIDERS__LOCAL__KIND"] = "deterministic"
        extra.update(env or {})
        self.env = clean_env(**extra)
        command = [sys.executable, "-m", "copydesk", "serve", "--port", "0"]
        for path in agents:
            command += ["--agents", str(path)]
        self.process = ListeningProcess(command, self.env, LISTENING)
        self.api_key: str | None = None

    def start(self) -> CopydeskServer:
        self.process.start()
        lines = self.process.lines
        for index, line in enumerate(lines[:-1]):
            if line.startswith(KEY_HEADING):
                self.api_key = lines[index + 1].strip()
        return self

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> CopydeskServer:
        self.stop()
        return self.start()

    @property
    def output(self) -> str:
        return self.process.output

    # --- clients -----------------------------------------------------------------------

    @property
    def key(self) -> str:
        assert self.api_key, f"the server printed no bootstrap key; output:\n{self.output}"
        return self.api_key

    @property
    def url(self) -> str:
        assert self.process.url, "the server is not running"
        return self.process.url

    @property
    def pid(self) -> int:
        """The server process's id, to read its ``/proc/<pid>`` entries."""
        pid = self.process.pid
        assert pid is not None, "the server is not running"
        return pid

    def client(self, api_key: str | None = None, **options: Any) -> writerai.Writer:
        return writerai.Writer(
            api_key=api_key if api_key is not None else self.key,
            base_url=self.url,
            max_retries=0,
            _strict_response_validation=True,
            **options,
        )

    def async_client(self, api_key: str | None = None, **options: Any) -> writerai.AsyncWriter:
        return writerai.AsyncWriter(
            api_key=api_key if api_key is not None else self.key,
            base_url=self.url,
            max_retries=0,
            _strict_response_validation=True,
            **options,
        )

    def http(
        self, method: str, path: str, *, api_key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A raw request, for what the SDK cannot send (bad JSON, wrong methods, bad params)."""
        headers = {"Authorization": f"Bearer {api_key or self.key}", **kwargs.pop("headers", {})}
        with httpx.Client(base_url=self.url, timeout=30) as raw:
            return raw.request(method, path, headers=headers, **kwargs)

    def cli(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI on this server's data dir and configuration."""
        return copydesk(self.env, *args, check=check)

    def new_key(self, org: str) -> str:
        return self.cli("keys", "create", "--org", org).stdout.strip()

    def keys(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(self.cli("keys", "list", "--json").stdout)
        return listed

    def generation_count(self) -> int:
        """Rows in the usage table (the one thing a generate call stores)."""
        uri = f"file:{self.data_dir / 'copydesk.db'}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            (count,) = db.execute("SELECT count(*) FROM generations").fetchone()
        return int(count)


def write_agent(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_agents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of agents for the tests, next to the examples."""
    folder = tmp_path_factory.mktemp("agents")
    write_agent(folder, "brief.yaml", BRIEF_AGENT)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_agents: Path) -> Iterator[CopydeskServer]:
    """A deterministic server with the examples and the test agents, shared by a module."""
    running = CopydeskServer(
        tmp_path_factory.mktemp("server") / "data", agents=[EXAMPLES, test_agents]
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    """Start servers that live for one test: ``launch(agents=[...], env={...})``."""
    started: list[CopydeskServer] = []

    def _launch(
        *,
        agents: Sequence[Path] = (),
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> CopydeskServer:
        running = CopydeskServer(
            data_dir or tmp_path / f"server-{len(started)}", agents=agents, env=env
        )
        started.append(running)
        return running.start()

    yield _launch
    for running in reversed(started):
        running.stop()


@pytest.fixture
def client(server: CopydeskServer) -> Iterator[writerai.Writer]:
    with server.client() as sdk:
        yield sdk


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest) -> Path:
    """Where the embedded provider assembles its GGUF: kept across sessions (pytest cache)."""
    return request.config.cache.mkdir("copydesk-models")


@pytest.fixture(scope="session")
def model_server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path
) -> Iterator[CopydeskServer]:
    """The real embedded model (default settings), with the examples and a short agent."""
    agents = tmp_path_factory.mktemp("model-agents")
    text = (EXAMPLES / "product-description.yaml").read_text(encoding="utf-8")
    short = (
        text.replace(f"id: {PRODUCT_ID}", f"id: {SHORT_PRODUCT_ID}")
        .replace("name: Product description writer", "name: Short product description")
        .replace("max_tokens: 200", "max_tokens: 32")
    )
    assert short.count(SHORT_PRODUCT_ID) == 1
    assert "max_tokens: 32" in short
    write_agent(agents, "product-description-short.yaml", short)
    running = CopydeskServer(
        tmp_path_factory.mktemp("model-server") / "data",
        cache_dir=model_cache,
        agents=[EXAMPLES, agents],
        deterministic=False,
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
