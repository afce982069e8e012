"""``UTCDateTime`` on SQLite: its one-step text conversions store and read exactly what
SQLAlchemy's own SQLite ``DATETIME`` does (rows written either way compare and sort as
text in SQL), and every value comes back aware, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.sqlite import DATETIME

from copydesk.stores.tables import UTCDateTime

VALUES = [
    datetime(2026, 12, 6, 16, 54, 36, 123456, tzinfo=UTC),
    datetime(2026, 12, 6, 16, 54, 36, tzinfo=UTC),  # no microseconds: still written
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 2, 30, 0, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 3, 29, 2, 30, 0, 7, tzinfo=timezone(timedelta(hours=-8))),
]


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_sqlite_text_is_sqlalchemys_and_reads_back_in_utc(value: datetime) -> None:
    dialect = sqlite.dialect()
    bind = UTCDateTime().bind_processor(dialect)
    result = UTCDateTime().result_processor(dialect, None)
    theirs = DATETIME().bind_processor(dialect)(value.astimezone(UTC).replace(tzinfo=None))

    stored = bind(value)

    assert stored == theirs
    back = result(stored)
    assert back == value
    assert back.tzinfo is UTC


def test_sqlite_reads_text_written_without_microseconds() -> None:
    result = UTCDateTime().result_processor(sqlite.dialect(), None)
    assert result("2026-12-06 16:54:36") == datetime(2026, 12, 6, 16, 54, 36, tzinfo=UTC)
    assert result(None) is None


def test_a_naive_datetime_is_refused_on_every_dialect() -> None:
    naive = datetime(2026, 12, 6, 16, 54, 36)
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        bind = UTCDateTime().bind_processor(dialect)
        with pytest.raises(ValueError, match="naive"):
            bind(naive) if bind else UTCDateTime().process_bind_param(naive, dialect)
