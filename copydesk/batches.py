"""Batches (a Copydesk extension): many rows of inputs for one agent, one job per row.

Pure domain, no I/O: the records the batch store returns, the :class:`BatchStore` port,
and the three body formats a batch is submitted in.

Body formats (every row may carry a caller-chosen ``custom_id``, at most 200 characters,
unique within the batch):

- JSON: an array of rows. A row is either Writer's shape,
  ``{"custom_id": "a1", "inputs": [{"id": "tone", "value": ["Playful"]}]}``, or the
  shorthand ``{"custom_id": "a1", "tone": "Playful", "product_names": ["Mug", "Lid"]}``
  (a string is one value, an array several). A row is in Writer's shape when its
  ``inputs`` is an array.
- JSONL (``application/x-ndjson`` or ``application/jsonl``): one such row per line; blank
  lines are skipped.
- CSV (``text/csv``): a header row of input names, plus an optional ``custom_id`` column.
  Several values of one input go in one cell separated by ``|``; ``\\|`` is a literal
  ``|`` and ``\\\\`` a literal backslash. An empty cell gives the input no value.

Statuses: a batch is ``in_progress`` while any of its jobs is queued or running,
``completed`` when none is (whatever their outcome), ``cancelled`` once cancelled.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from copydesk.errors import Problem
from copydesk.store import EnqueueHook, Job, NewJob

BatchStatus = Literal["in_progress", "completed", "cancelled"]
BodyFormat = Literal["json", "jsonl", "csv"]

SEPARATOR = "|"
ESCAPE = "\\"
CUSTOM_ID = "custom_id"
CUSTOM_ID_MAX = 200
#: Default priority of a batch's jobs: below single jobs (0), so interactive work goes first.
BATCH_PRIORITY = -1
PRIORITY_RANGE = (-100, 100)


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestCounts:
    total: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Batch:
    id: str
    org_id: str
    agent_id: str
    agent_version: int
    status: BatchStatus
    total: int
    priority: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    counts: RequestCounts = field(default_factory=RequestCounts)
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class NewBatch:
    id: str
    org_id: str
    agent_id: str
    agent_version: int
    priority: int


@dataclass(frozen=True)
class BatchJob:
    """A batch's job with its place in the batch."""

    job: Job
    batch_id: str
    row_index: int
    custom_id: str | None


@dataclass(frozen=True)
class NewRow:
    """One validated row, ready to be stored as a job."""

    job: NewJob
    row_index: int
    custom_id: str | None


@dataclass(frozen=True)
class ResultRow:
    """One line of a batch's results export."""

    row_index: int
    custom_id: str | None
    inputs: list[dict[str, Any]]
    status: str
    title: str | None
    suggestion: str | None
    error: str | None


@dataclass(frozen=True)
class RowEvent:
    """A row that reached an end (completed, failed or cancelled), for live progress."""

    row_index: int
    custom_id: str | None
    job_id: str
    status: str
    error: str | None
    #: keyset position in completion order: (completed_at, seq)
    position: tuple[datetime, int]


@dataclass(frozen=True)
class BatchJobQuery:
    statuses: tuple[str, ...] | None = None
    custom_id: str | None = None
    offset: int = 0
    limit: int = 50


def batch_status(counts: RequestCounts, cancelled: bool) -> BatchStatus:
    if cancelled:
        return "cancelled"
    return "in_progress" if counts.in_progress else "completed"


class BatchStore(Protocol):
    """Batches and their jobs. Scoped by organisation like every store."""

    async def create_batch(
        self, batch: NewBatch, rows: list[NewRow], enqueue: EnqueueHook | None = None
    ) -> Batch:
        """Store the batch and one queued job per row in one transaction; ``enqueue`` runs
        in it."""
        ...

    async def get_batch(self, org_id: str, batch_id: str) -> Batch | None:
        """The batch with its counts and usage (marked completed when nothing is active)."""
        ...

    async def list_batches(
        self, org_id: str, agent_id: str | None, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        """Newest first; ``after`` is the last id of the previous page. Items, has_more."""
        ...

    async def list_batch_jobs(
        self, org_id: str, batch_id: str, query: BatchJobQuery
    ) -> tuple[list[BatchJob], int]: ...

    async def result_rows(self, batch_id: str, after_row: int, limit: int) -> list[ResultRow]:
        """Rows with ``row_index > after_row``, in row order (keyset paging)."""
        ...

    async def row_events(
        self, batch_id: str, after: tuple[datetime, int] | None, limit: int
    ) -> list[RowEvent]:
        """Rows that ended after ``after``, in completion order."""
        ...

    async def retry_failed(
        self, org_id: str, batch_id: str, extra_attempts: int, enqueue: EnqueueHook | None = None
    ) -> int:
        """Put the batch's failed jobs back in the queue; how many."""
        ...

    async def cancel_batch(self, org_id: str, batch_id: str) -> int:
        """Cancel the batch and its queued and running jobs; how many jobs changed."""
        ...


# --- body formats -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedRow:
    """One row of a body: its inputs in Writer's wire shape, or what is wrong with it."""

    row_index: int
    custom_id: str | None
    inputs: list[dict[str, Any]]
    problems: list[Problem] = field(default_factory=list)


def body_format(content_type: str | None) -> BodyFormat | None:
    kind = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if kind in ("application/json", "text/json"):
        return "json"
    if kind in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        return "jsonl"
    if kind in ("text/csv", "application/csv"):
        return "csv"
    return None


def parse_body(body: bytes, fmt: BodyFormat) -> list[ParsedRow]:
    """Rows of a batch body; raises ValueError when the body as a whole is unreadable."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 text: {exc}") from exc
    if fmt == "csv":
        return list(_csv_rows(text))
    if fmt == "jsonl":
        return list(_jsonl_rows(text))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError("a JSON batch body must be an array of rows")
    return [_object_row(index, item) for index, item in enumerate(data)]


def _jsonl_rows(text: str) -> Iterator[ParsedRow]:
    index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            yield ParsedRow(index, None, [], [Problem(f"line {number}: not JSON: {exc}", "json")])
        else:
            yield _object_row(index, item)
        index += 1


def _custom_id(value: Any) -> tuple[str | None, list[Problem]]:
    if value is None:
        return None, []
    if not isinstance(value, str) or not value or len(value) > CUSTOM_ID_MAX:
        return None, [
            Problem(
                f"'custom_id' must be a string of 1 to {CUSTOM_ID_MAX} characters",
                "custom_id",
                input=CUSTOM_ID,
            )
        ]
    return value, []


def _object_row(index: int, item: Any) -> ParsedRow:
    if not isinstance(item, dict):
        return ParsedRow(index, None, [], [Problem("a row must be a JSON object", "row_shape")])
    custom_id, problems = _custom_id(item.get(CUSTOM_ID))
    if isinstance(item.get("inputs"), list):
        extra = sorted(set(item) - {"inputs", CUSTOM_ID})
        if extra:
            problems.append(
                Problem(
                    f"a row with 'inputs' takes only 'custom_id' beside it, not {extra}",
                    "row_shape",
                )
            )
        return ParsedRow(index, custom_id, list(item["inputs"]), problems)
    inputs = [
        {"id": name, "value": value}
        for name, value in item.items()
        if name != CUSTOM_ID  # shapes are checked like Writer's (parse_inputs)
    ]
    return ParsedRow(index, custom_id, inputs, problems)


def split_cell(cell: str) -> list[str]:
    """Values of one CSV cell: separated by ``|``, with ``\\|`` and ``\\\\`` escaped."""
    if ESCAPE not in cell:
        return cell.split(SEPARATOR)
    values: list[str] = []
    current: list[str] = []
    chars = iter(cell)
    for char in chars:
        if char == ESCAPE:
            following = next(chars, "")
            if following in (SEPARATOR, ESCAPE):
                current.append(following)
            else:  # a lone backslash stays as it is
                current.append(char + following)
        elif char == SEPARATOR:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    return values


def join_cell(values: list[str]) -> str:
    """The inverse of :func:`split_cell`."""
    return SEPARATOR.join(
        v.replace(ESCAPE, ESCAPE + ESCAPE).replace(SEPARATOR, ESCAPE + SEPARATOR) for v in values
    )


def _csv_rows(text: str) -> Iterator[ParsedRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    names = [name.strip() for name in header]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or "" in names:
        raise ValueError(f"the CSV header needs distinct, non-empty names (got {names})")
    index = 0
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # blank line
        problems: list[Problem] = []
        if len(cells) != len(names):
            problems.append(
                Problem(
                    f"the row has {len(cells)} cells, the header {len(names)}",
                    "csv_cells",
                )
            )
        custom_id: str | None = None
        inputs: list[dict[str, Any]] = []
        for name, cell in zip(names, cells, strict=False):
            if name == CUSTOM_ID:
                custom_id, found = _custom_id(cell or None)
                problems += found
            elif cell != "":
                inputs.append({"id": name, "value": split_cell(cell)})
        yield ParsedRow(index, custom_id, inputs, problems)
        index += 1


def csv_header(input_names: list[str]) -> list[str]:
    return ["row_index", CUSTOM_ID, *input_names, "status", "title", "suggestion", "error"]


def _csv_text(cells: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def csv_header_line(input_names: list[str]) -> str:
    return _csv_text(csv_header(input_names))


def csv_line(row: ResultRow, input_names: list[str]) -> str:
    values = {str(i.get("id")): i.get("value") or [] for i in row.inputs}
    cells: list[Any] = [row.row_index, row.custom_id or ""]
    cells += [join_cell([str(v) for v in values.get(name, [])]) for name in input_names]
    cells += [row.status, row.title or "", row.suggestion or "", row.error or ""]
    return _csv_text(cells)


def jsonl_line(row: ResultRow) -> str:
    output = None
    if row.status == "completed":
        output = {"title": row.title, "suggestion": row.suggestion or ""}
    return (
        json.dumps(
            {
                "row_index": row.row_index,
                CUSTOM_ID: row.custom_id,
                "inputs": {str(i.get("id")): i.get("value") for i in row.inputs},
                "status": row.status,
                "output": output,
                "error": row.error,
            },
            ensure_ascii=False,
        )
        + "\n"
    )
