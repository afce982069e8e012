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


def test_the_cached_conversions_answer_each_value_as_a_fresh_one_would() -> None:
    # The same instant in three zones, converted one after the other: the text of the
    # first (cached) is right for the others, and a naive time with the same wall clock
    # is still refused (an error is never cached).
    dialect = sqlite.dialect()
    bind = UTCDateTime().bind_processor(dialect)
    result = UTCDateTime().result_processor(dialect, None)
    utc = datetime(2026, 12, 6, 21, 0, 0, 5, tzinfo=UTC)
    zones = [utc, utc.astimezone(timezone(timedelta(hours=1))), utc.astimezone(timezone.min)]

    texts = [bind(value) for value in zones]

    assert texts == ["2026-12-06 21:00:00.000005"] * 3
    with pytest.raises(ValueError, match="naive"):
        bind(utc.replace(tzinfo=None))
    assert result(texts[0]) is result(texts[1])  # one parse, shared (datetimes are immutable)
    assert result(texts[0]).tzinfo is UTC
