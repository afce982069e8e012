"""Copydesk itself: the real stack, one ``copydesk worker`` process, the ``echo`` provider.

Jobs are validated once (``Generator.prepare``, what ``Backlog.submit`` does per job) and
stored in bulk through ``JobStore.create_jobs`` with the engine's enqueue hook, so on
PostgreSQL the PgQueuer entries are written in the same transaction as the job rows,
exactly as the API does for one job. Completion is read back with ``JobStore.list_jobs``
(status ``completed``), the query the API's job list makes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from bench.engines.common import CHUNK, PG_DSN, Worker, python, reset_pg_database, spawn
from copydesk.app import App
from copydesk.config import Settings
from copydesk.jobs import statuses_for
from copydesk.store import NewJob

AGENT_FILE = Path(__file__).with_name("noop-agent.yaml")
AGENT_ID = "4c0e9d1a-5b2f-4e8a-9c3d-7f1a2b3c4d5e"
INPUTS = [{"id": "text", "value": ["ping"]}]


class CopydeskRunner:
    ready_marker = "COPYDESK_WORKER "

    def __init__(self, database: str) -> None:
        self.database = database
        self.name = f"copydesk-{'embedded' if database == 'sqlite' else 'postgres'}"
        engine = "embedded (claims from the jobs table)" if database == "sqlite" else "pgqueuer"
        self.notes = (
            f"{database} + {engine} engine; echo provider max_concurrency=C; "
            "bulk: JobStore.create_jobs"
        )
        self._data: Path | None = None
        self._app: App | None = None
        self._org = ""
        self._concurrency = 0

    def _env(self) -> dict[str, str]:
        assert self._data is not None
        env = {
            "COPYDESK_DATA_DIR": str(self._data),
            "COPYDESK_LOG_LEVEL": "warning",
            "COPYDESK_DEFAULT_PROVIDER": "echo",
            "COPYDESK_PROVIDERS__ECHO__MAX_CONCURRENCY": str(self._concurrency or 100),
        }
        if self.database == "postgres":
            env["COPYDESK_DATABASE_URL"] = PG_DSN.replace("postgresql://", "postgresql+asyncpg://")
        return env

    async def reset(self) -> None:
        self._data = Path(tempfile.mkdtemp(prefix="copydesk-bench-"))
        if self.database == "postgres":
            await reset_pg_database()
        self._app = await self._open()

    async def _open(self) -> App:
        # The settings the worker reads from its environment, read here the same way.
        saved = dict(os.environ)
        os.environ.update(self._env())
        try:
            settings = Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        app = App(settings)
        await app.open()  # migrates (and installs PgQueuer's schema) before the worker starts
        org = await app.accounts.ensure_organization(settings.bootstrap_org)
        await app.catalog.deploy_files(org.id, [AGENT_FILE])
        self._org = org.id
        return app

    def start_worker(self, concurrency: int) -> Worker:
        self._concurrency = concurrency
        return spawn(python("-m", "copydesk", "worker"), self._env())

    async def enqueue(self, count: int) -> None:
        assert self._app is not None
        app = self._app
        prepared = await app.generator.prepare(self._org, AGENT_ID, INPUTS)
        inputs = [{"id": k, "value": v} for k, v in prepared.values.items()]
        for start in range(0, count, CHUNK):
            batch = [
                NewJob(
                    id=str(uuid.uuid4()),
                    org_id=self._org,
                    agent_id=prepared.agent.id,
                    agent_version=prepared.agent.version,
                    provider=prepared.provider,
                    inputs=inputs,
                    max_attempts=app.settings.max_attempts,
                )
                for _ in range(min(CHUNK, count - start))
            ]
            await app.jobs.create_jobs(batch, app.queue.enqueue_hook)
            app.queue.notify()

    async def completed(self) -> int:
        assert self._app is not None
        page = await self._app.jobs.list_jobs(self._org, AGENT_ID, statuses_for("completed"), 0, 1)
        return page.total

    async def close(self) -> None:
        if self._app is not None:
            await self._app.close()
            self._app = None
        if self._data is not None:
            shutil.rmtree(self._data, ignore_errors=True)
            self._data = None
