"""Copydesk's record keeping on SQLite and nothing else: how fast *any* embedded Copydesk
could go on this machine, with its rows written in their cheapest form.

Not a peer (it is not ranked as one): a bound for the ``copydesk-embedded`` row, as
``pgqueuer+records`` is for ``copydesk-postgres``. The database is Copydesk's own (its
migrations, indexes and pragmas: WAL, ``synchronous=NORMAL``), the statements are the
ones ``bench.record_floor`` sends straight through ``sqlite3``, and nothing else runs:
no SQLAlchemy, no ``Job`` objects, no prompt, no provider, no flow control, no webhooks.

- producer: per chunk, one transaction inserting the job rows (``executemany``), as
  ``SQLJobStore.create_jobs`` does;
- worker: one event loop; a claim loop takes up to 256 queued jobs at a time (one
  ``UPDATE ... RETURNING`` marking them running under a lease, as the embedded engine's
  claim does) while fewer than 2 x C are held (C calls plus C picked ahead, Copydesk's
  default prefetch), runs each as a task that does nothing and hands its outcome to a
  batch writer without waiting (``OutcomeWriter.hand_over``): per batch, one transaction
  with the ``completed`` change and the attempt record of each job (``executemany``).
  The driver is called in the loop's own thread (no hop to a database thread), and when
  the queue is empty the loop looks again after 5 ms (Copydesk: 0.2 s, or a wake-up);
- completed: the jobs whose row says ``completed``.

``sqlite+records+prompt`` adds the one piece of per-job work no Copydesk can skip: each
task reads its job's inputs (JSON) and renders the agent's prompt into a provider request
(``copydesk.generation.build_request``, the sandboxed Jinja template of the no-op agent).

    python -m bench.engines.sqlite_records_runner DATABASE CONCURRENCY [--prompt]  # worker
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.engines.common import CHUNK, READY, Worker, agent_from, migrated_org, python, spawn
from bench.record_floor import _ATTEMPT, _COMPLETE, _PICKED, _TAKE

LEASE = timedelta(seconds=30)
CLAIM_BATCH = 256
_INSERT = (
    "INSERT INTO jobs (id, org_id, agent_id, agent_version, provider, inputs, status, "
    "priority, fair_rank, attempts, max_attempts, available_at, created_at, updated_at, "
    "prompt_tokens, completion_tokens) "
    "VALUES (?, ?, 'noop', 1, 'echo', ?, 'queued', 0, ?, 0, 3, ?, ?, ?, 0, 0)"
)
_CLAIM = _TAKE.format(p="?", picked=_PICKED.format(p="?"))
#: The change only applies to a job this worker still holds, as the store's does.
_FINISH = _COMPLETE.format(p="?") + " AND status = 'running' AND lease_owner = ?"
_RECORD = _ATTEMPT.format(p="?")


def connect(path: str) -> sqlite3.Connection:
    """A connection with the pragmas ``SQLStore`` sets (autocommit: explicit BEGINs; one
    thread at a time, not always the same one, as aiosqlite uses it)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        db.execute(f"PRAGMA {pragma}")
    return db


def stamp(value: datetime) -> str:
    """A time as Copydesk's SQLite columns store it (``tables._sqlite_text``)."""
    return value.isoformat(" ", "microseconds")[:26]


class SqliteRecordsRunner:
    def __init__(self, prompt: bool = False) -> None:
        self.prompt = prompt
        self.name = "sqlite+records+prompt" if prompt else "sqlite+records"
        self.notes = (
            "bound, not a peer: Copydesk's SQLite schema + its rows per job (jobs insert, "
            "claim running, completed, attempt) straight through sqlite3, in batches"
            + ("; each job's prompt rendered" if prompt else "")
        )
        self._dir: Path | None = None
        self._db: sqlite3.Connection | None = None
        self._org = ""
        self._rank = 0

    @property
    def _path(self) -> str:
        assert self._dir is not None
        return str(self._dir / "copydesk.db")

    async def reset(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="copydesk-bench-bound-"))
        self._org = await migrated_org(f"sqlite+aiosqlite:///{self._path}")
        self._db = connect(self._path)

    def start_worker(self, concurrency: int) -> Worker:
        args = python("-m", "bench.engines.sqlite_records_runner", self._path, str(concurrency))
        return spawn(args + (["--prompt"] if self.prompt else []))

    def _insert(self, n: int) -> None:
        db = self._db
        assert db is not None
        inputs = json.dumps([{"id": "text", "value": ["ping"]}])
        now = stamp(datetime.now(UTC))
        rows = [
            (str(uuid.uuid4()), self._org, inputs, self._rank + i + 1, now, now, now)
            for i in range(n)
        ]
        self._rank += n
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, rows)
        db.execute("COMMIT")

    async def enqueue(self, count: int) -> None:
        for start in range(0, count, CHUNK):
            # In a thread, like aiosqlite: the clock's poll keeps running meanwhile.
            await asyncio.to_thread(self._insert, min(CHUNK, count - start))

    async def completed(self) -> int:
        def count() -> int:
            db = connect(self._path)
            try:
                row = db.execute(
                    "SELECT count(*) FROM jobs WHERE org_id = ? AND agent_id = 'noop' "
                    "AND status = 'completed'",
                    (self._org,),
                ).fetchone()
                return int(row[0])
            finally:
                db.close()

        return await asyncio.to_thread(count)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PromptRenderRunner(SqliteRecordsRunner):
    def __init__(self) -> None:
        super().__init__(prompt=True)


def _renderer() -> Callable[[str], object]:
    """Each job's inputs (its row's JSON) rendered into the no-op agent's request."""
    from copydesk.generation import build_request

    agent = agent_from(Path(__file__).with_name("noop-agent.yaml"))

    def render(inputs: str) -> object:
        values = {str(item["id"]): list(item["value"]) for item in json.loads(inputs)}
        return build_request(agent, values, None)

    return render


async def work(path: str, concurrency: int, stop: asyncio.Event, prompt: bool) -> None:
    from copydesk.worker import Batcher

    render = _renderer() if prompt else None
    db = connect(path)
    owner = "bound"
    capacity = 2 * concurrency
    held = 0
    slot_free = asyncio.Event()

    async def finish(rows: list[tuple[int, int, str]]) -> list[bool]:
        now = stamp(datetime.now(UTC))
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_FINISH, [(now, now, "t", "s", 1, 1, seq, owner) for seq, _, _ in rows])
        db.executemany(_RECORD, [(seq, n, owner, began, now) for seq, n, began in rows])
        db.execute("COMMIT")
        return [True] * len(rows)

    writer: Batcher[tuple[int, int, str], bool] = Batcher("finish", finish)
    writer.start()

    async def run(seq: int, attempt: int, began: str, inputs: str) -> None:
        nonlocal held
        if render is not None:
            render(inputs)
        writer.submit_nowait((seq, attempt, began))  # the no-op's outcome, not awaited
        held -= 1
        slot_free.set()

    tasks: set[asyncio.Task[None]] = set()
    print(READY, flush=True)
    while not stop.is_set():
        free = capacity - held
        if free <= 0:
            slot_free.clear()
            await slot_free.wait()
            continue
        now = datetime.now(UTC)
        db.execute("BEGIN IMMEDIATE")
        cursor = db.execute(
            _CLAIM, (owner, stamp(now + LEASE), stamp(now), stamp(now), min(free, CLAIM_BATCH))
        )
        rows = cursor.fetchall()
        db.execute("COMMIT")
        if not rows:
            await asyncio.sleep(0.005)
            continue
        held += len(rows)
        names = [d[0] for d in cursor.description]  # RETURNING *
        attempts, inputs = names.index("attempts"), names.index("inputs")
        for row in rows:
            task = asyncio.create_task(run(row[0], row[attempts], stamp(now), row[inputs]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0)  # let them run, as a claim loop that awaits its next claim
    await writer.stop()
    db.close()


def main() -> None:
    import signal

    import uvloop

    logging.basicConfig(level=logging.WARNING)
    path, concurrency, prompt = sys.argv[1], int(sys.argv[2]), "--prompt" in sys.argv[3:]

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await work(path, concurrency, stop, prompt)

    uvloop.run(run())


if __name__ == "__main__":
    main()
