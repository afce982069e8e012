"""File processing on the job engine: PgQueuer entries for ``copydesk.files`` written in
the file's transaction and run by the workers' entrypoint; the embedded engine's claim loop.

Extraction is an injected function that counts its calls, so a document extracted twice
(two workers, or an entry and the sweep) shows. The PgQueuer tests set the sweep for lost
entries very long: only an entry can have processed their files.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from copydesk.app import App
from copydesk.config import Settings
from copydesk.engines.pgqueuer import FILES_ENTRYPOINT
from copydesk.extraction import Extracted, ExtractionFailed
from copydesk.library import Library
from copydesk.store import CursorQuery, FileHook, NewFile, Organization, StoredFile
from copydesk.stores.sql import SQLFileStore, SQLStore
from copydesk.worker import Worker
from tests.conftest import PG_ADMIN_URL, PG_HOST, PG_PORT, require_service
from tests.integration.conftest import STORE_KINDS, DatabaseKind

MakeApp = Callable[..., Awaitable[App]]
WAIT_S = 10.0
NEVER_S = 3600.0  # a sweep for lost entries that never comes during a test


class CountingExtract:
    """An ``Extract`` that records the bytes of every call (from any worker thread);
    bytes starting with ``fail`` fail while ``failing`` is set."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: Counter[bytes] = Counter()
        self.failing = True
        self._delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, data: bytes, extension: str) -> Extracted:
        with self._lock:
            self.calls[data] += 1
        if self._delay_s:
            time.sleep(self._delay_s)
        if self.failing and data.startswith(b"fail"):
            raise ExtractionFailed("the document is encrypted")
        return Extracted(text=data.decode(), word_count=len(data.split()))


async def _admin(statement: str) -> None:
    admin = create_async_engine(PG_ADMIN_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


@pytest.fixture
async def database_url(db_kind: DatabaseKind, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database (PgQueuer's
    tables live in its public schema)."""
    if db_kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'copydesk.db'}"
        return
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"copydesk_f_{uuid.uuid4().hex}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def make_app(database_url: str, tmp_path: Path) -> AsyncIterator[MakeApp]:
    """Opened ``App``s on the test database (each one a process, sharing one data_dir as
    scale-out workers share the API's files); their library extracts with ``extract``."""
    apps: list[App] = []

    async def make(extract: CountingExtract, **overrides: Any) -> App:
        values: dict[str, Any] = {
            "database_url": database_url,
            "data_dir": tmp_path / "data",
            "engine": "pgqueuer",
            "providers": {"local": {"kind": "deterministic", "max_concurrency": 2}},
            "lease_s": 1.0,
            "poll_interval_s": 0.1,
            "shutdown_grace_s": 5.0,
            "files_sweep_s": NEVER_S,
        }
        values.update(overrides)
        app = App(Settings(**values))
        app.library = Library(
            app.files,
            app.blobs,
            app.settings.max_upload_bytes,
            extract,
            dispatch=app.queue.file_hook,
        )
        await app.open()
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            await app.close()


# --- helpers --------------------------------------------------------------------------


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def org_of(app: App) -> Organization:
    return await app.store.get_organization_by_name("acme") or (
        await app.store.create_organization("acme")
    )


async def upload(app: App, org: Organization, name: str, data: bytes) -> StoredFile:
    return await app.library.upload(org.id, name, body(data))


async def entries(app: App, file_id: str | None = None) -> int:
    """Queued PgQueuer entries for uploaded files (of one file, when given)."""
    query = "SELECT count(*) FROM pgqueuer WHERE entrypoint = :ep"
    params: dict[str, Any] = {"ep": FILES_ENTRYPOINT}
    if file_id is not None:
        query += " AND payload = :payload"
        params["payload"] = file_id.encode()
    async with app.store.engine.connect() as conn:
        return int((await conn.execute(text(query), params)).scalar_one())


async def settled(app: App, org: Organization, files: list[StoredFile]) -> list[StoredFile]:
    """The files, once none is in progress any more."""
    deadline = time.monotonic() + WAIT_S
    while True:
        current = [await app.library.get(org.id, f.id) for f in files]
        if all(f.status != "in_progress" for f in current):
            return current
        if time.monotonic() > deadline:
            states = [(f.name, f.status) for f in current]
            raise AssertionError(f"files still in progress after {WAIT_S}s: {states}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


# --- the PgQueuer engine --------------------------------------------------------------

pg = pytest.mark.parametrize("db_kind", [STORE_KINDS[1]])


@pg
async def test_an_upload_is_extracted_by_its_entry(make_app: MakeApp) -> None:
    extract = CountingExtract()
    app = await make_app(extract)
    assert app.queue.dispatches_files
    org = await org_of(app)
    doc = await upload(app, org, "notes.txt", b"one two three")
    image = await upload(app, org, "logo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    assert image.status == "completed"  # an image has no text: no entry
    assert await entries(app, doc.id) == 1
    assert await entries(app) == 1

    async with running(app.worker()):
        [done] = await settled(app, org, [doc])
    assert (done.status, done.text, done.word_count) == ("completed", "one two three", 3)
    assert extract.calls == Counter({b"one two three": 1})
    assert await entries(app) == 0


@pg
async def test_the_entry_is_written_in_the_files_transaction(make_app: MakeApp) -> None:
    app = await make_app(CountingExtract())
    org = await org_of(app)
    hook = app.queue.file_hook
    assert hook is not None

    async def then_fail(conn: Any, file_ids: list[str]) -> None:
        await hook(conn, file_ids)
        raise RuntimeError("the commit never comes")

    failing: FileHook = then_fail
    lib = Library(app.files, app.blobs, app.settings.max_upload_bytes, dispatch=failing)
    with pytest.raises(RuntimeError, match="the commit never comes"):
        await lib.upload(org.id, "notes.txt", body(b"one two"))
    assert await entries(app) == 0  # rolled back with the file row
    assert (await app.library.page(org.id, CursorQuery())).items == []
    assert [p for p in app.settings.files_dir.rglob("*") if p.is_file()] == []

    # Outside a transaction the hook refuses to write an entry on its own.
    async with app.store.engine.connect() as conn:
        with pytest.raises(RuntimeError, match="in the file's transaction"):
            await hook(conn, ["some-file"])
    assert await entries(app) == 0


@pg
async def test_retry_queues_a_new_entry(make_app: MakeApp) -> None:
    extract = CountingExtract()
    app = await make_app(extract)
    org = await org_of(app)
    doc = await upload(app, org, "secret.txt", b"fail to read")
    async with running(app.worker()):
        [failed] = await settled(app, org, [doc])
    assert failed.status == "failed"
    assert await entries(app) == 0

    extract.failing = False
    [retried] = await app.library.retry(org.id, [doc.id])
    assert retried.status == "in_progress"
    assert await entries(app, doc.id) == 1
    async with running(app.worker()):
        [done] = await settled(app, org, [doc])
    assert (done.status, done.text) == ("completed", "fail to read")
    assert extract.calls == Counter({b"fail to read": 2})


@pg
async def test_two_workers_extract_each_file_once(make_app: MakeApp) -> None:
    extract = CountingExtract(delay_s=0.1)
    a = await make_app(extract, file_concurrency=4)
    b = await make_app(extract, file_concurrency=4)
    org = await org_of(a)
    docs = [await upload(a, org, f"doc-{i}.txt", f"document {i}".encode()) for i in range(16)]
    # Two entries for every file, side by side, as a re-picked entry would be: they are
    # dequeued together, their handlers race for the same file and only one may extract it.
    hook = a.queue.file_hook
    assert hook is not None
    async with a.store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM pgqueuer"))
        await hook(conn, [d.id for d in docs for _ in range(2)])
    assert await entries(a) == 2 * len(docs)

    async with running(a.worker(), b.worker()):
        done = await settled(a, org, docs)
        deadline = time.monotonic() + WAIT_S
        while await entries(a) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert {f.status for f in done} == {"completed"}
    assert extract.calls == Counter({f"document {i}".encode(): 1 for i in range(16)})
    assert await entries(a) == 0


@pg
async def test_the_sweep_processes_a_file_whose_entry_was_lost(make_app: MakeApp) -> None:
    extract = CountingExtract()
    app = await make_app(extract, files_sweep_s=0.3)
    org = await org_of(app)
    doc = await upload(app, org, "notes.txt", b"lost entry")
    async with app.store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM pgqueuer"))
    async with running(app.worker()):
        [done] = await settled(app, org, [doc])
    assert done.status == "completed"
    assert extract.calls == Counter({b"lost entry": 1})


# --- the embedded engine --------------------------------------------------------------


async def test_the_embedded_engine_claims_files_itself(make_app: MakeApp) -> None:
    extract = CountingExtract()
    app = await make_app(extract, engine="embedded")
    assert (app.queue.file_hook, app.queue.dispatches_files) == (None, False)
    org = await org_of(app)
    docs = [await upload(app, org, f"doc-{i}.txt", f"text {i}".encode()) for i in range(3)]
    async with running(app.worker()):
        done = await settled(app, org, docs)
    assert {f.status for f in done} == {"completed"}
    assert extract.calls == Counter({f"text {i}".encode(): 1 for i in range(3)})


# --- the store: claiming one file -----------------------------------------------------


def _new(org_id: str, name: str, status: str = "in_progress") -> NewFile:
    file_id = str(uuid.uuid4())
    return NewFile(
        id=file_id,
        org_id=org_id,
        name=name,
        mime_type="text/plain",
        extension="txt",
        size_bytes=1,
        sha256="0" * 64,
        storage_key=f"{file_id}.txt",
        status=status,  # type: ignore[arg-type]
    )


async def test_claim_file_takes_one_waiting_file_once(store: SQLStore) -> None:
    files = SQLFileStore(store)
    org = await store.create_organization("acme")
    doc = await files.create_file(_new(org.id, "a.txt"))
    image = await files.create_file(_new(org.id, "i.png", status="completed"))

    claimed = await files.claim_file(doc.id, lease_s=60)
    assert claimed is not None
    assert claimed.id == doc.id
    assert await files.claim_file(doc.id, lease_s=60) is None  # held under a live lease
    assert await files.claim_files(10, lease_s=60) == []
    assert await files.claim_file(image.id, lease_s=60) is None  # nothing to process
    assert await files.claim_file("unknown", lease_s=60) is None

    expiring = await files.create_file(_new(org.id, "b.txt"))
    assert await files.claim_file(expiring.id, lease_s=0) is not None
    assert await files.claim_file(expiring.id, lease_s=60) is not None  # lease expired
    await files.set_processed(doc.id, "completed", text="a", word_count=1)
    assert await files.claim_file(doc.id, lease_s=60) is None


async def test_claim_files_with_idle_s_skips_fresh_files(store: SQLStore) -> None:
    files = SQLFileStore(store)
    org = await store.create_organization("acme")
    doc = await files.create_file(_new(org.id, "a.txt"))
    assert await files.claim_files(10, lease_s=60, idle_s=NEVER_S) == []
    assert [f.id for f in await files.claim_files(10, lease_s=60, idle_s=0.0)] == [doc.id]
