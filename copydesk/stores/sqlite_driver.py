"""aiosqlite with one hand-off to its thread per statement, and none for an empty commit.

SQLAlchemy's aiosqlite adapter makes a round trip to the connection's thread for each
step of a statement: open a cursor, execute, fetch the rows, close the cursor, then
commit and (returning the connection to the pool) roll back. A read-only transaction of
one statement was six hand-offs, ~1 ms on this 2-core machine against microseconds of
SQLite work. Here a cursor is a plain object made in the event loop: ``execute`` runs
the statement, reads every row and closes the sqlite3 cursor in one call on the thread,
and the rest is answered from what that call returned. ``commit`` and ``rollback`` go to
the thread only when the connection is in a transaction (a read in SQLite's default mode
never opens one). Statements, transactions and locks are SQLite's as before: the same
sqlite3 connection runs the same SQL on the same thread.

Used through ``connect_args={"async_creator_fn": connect}`` (see ``stores.sql.create_engine``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")


class Cursor:
    """What SQLAlchemy's adapter asks of an aiosqlite cursor, one hand-off per statement."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._rows: list[Any] = []
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> Cursor:
        db = self._connection._conn

        def run() -> tuple[list[Any], Any, int, int | None]:
            cursor = db.cursor()
            try:
                cursor.execute(sql, () if parameters is None else parameters)
                # RETURNING rows are read to the end here: the statement completes (and
                # rowcount is final) before the answer goes back.
                rows = cursor.fetchall() if cursor.description else []
                return rows, cursor.description, cursor.rowcount, cursor.lastrowid
            finally:
                cursor.close()

        result = await self._connection.on_thread(run)
        self._rows, self.description, self.rowcount, self.lastrowid = result
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Cursor:
        db = self._connection._conn

        def run() -> tuple[int, int | None]:
            cursor = db.executemany(sql, parameters)
            try:
                return cursor.rowcount, cursor.lastrowid
            finally:
                cursor.close()

        self._rows, self.description = [], None
        self.rowcount, self.lastrowid = await self._connection.on_thread(run)
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows, self._rows = self._rows[:count], self._rows[count:]
        return rows

    async def close(self) -> None:
        self._rows = []


class Connection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors are :class:`Cursor`."""

    def cursor(self) -> Cursor:  # type: ignore[override]  # an awaitable context manager
        return Cursor(self)

    async def on_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the connection's thread: one hand-off (aiosqlite's queue)."""
        result: T = await self._execute(fn)  # type: ignore[no-untyped-call]
        return result

    def _in_transaction(self) -> bool:
        # Read in the loop's thread: the connection is made with check_same_thread=False
        # (as SQLAlchemy's pool has it), and nothing else runs on it meanwhile (a pooled
        # connection has one user, whose statements are awaited one at a time).
        return self._conn.in_transaction

    async def commit(self) -> None:
        if self._in_transaction():
            await super().commit()

    async def rollback(self) -> None:
        if self._in_transaction():
            await super().rollback()


def connect(database: str, **kwargs: Any) -> Connection:
    """``aiosqlite.connect`` making a :class:`Connection` (awaited by SQLAlchemy)."""
    kwargs.setdefault("check_same_thread", False)

    def connector() -> sqlite3.Connection:
        db: sqlite3.Connection = sqlite3.connect(database, **kwargs)
        return db

    connection = Connection(connector, iter_chunk_size=64)
    connection._thread.daemon = True  # as SQLAlchemy sets it for aiosqlite's own connect
    return connection
