"""Batch bodies (JSON, JSONL, CSV) and the CSV cell separator: pure functions."""

from __future__ import annotations

import csv
import io

import pytest

from copydesk.batches import (
    ResultRow,
    body_format,
    csv_header,
    csv_line,
    join_cell,
    parse_body,
    split_cell,
)


@pytest.mark.parametrize(
    ("cell", "values"),
    [
        ("one", ["one"]),
        ("a|b|c", ["a", "b", "c"]),
        ("a\\|b", ["a|b"]),
        ("back\\\\slash|x", ["back\\slash", "x"]),
        ("lone \\ backslash", ["lone \\ backslash"]),
        ("trailing|", ["trailing", ""]),
    ],
)
def test_split_cell(cell: str, values: list[str]) -> None:
    assert split_cell(cell) == values


@pytest.mark.parametrize(
    "values", [["a"], ["a", "b"], ["x|y", "z\\"], ["\\|", "|\\"], ["", "b"], ["a\\b"]]
)
def test_join_then_split_gives_the_values_back(values: list[str]) -> None:
    assert split_cell(join_cell(values)) == values


def test_body_format_by_content_type() -> None:
    assert body_format(None) == "json"
    assert body_format("application/json; charset=utf-8") == "json"
    assert body_format("application/x-ndjson") == "jsonl"
    assert body_format("application/jsonl") == "jsonl"
    assert body_format("text/csv; charset=utf-8") == "csv"
    assert body_format("text/plain") is None


def test_json_rows_in_both_shapes() -> None:
    rows = parse_body(
        b'[{"custom_id": "a", "inputs": [{"id": "t", "value": ["x"]}]},'
        b' {"t": ["y", "z"], "u": "w"}, 5, {"custom_id": 7, "t": "v"}]',
        "json",
    )
    assert [(r.row_index, r.custom_id) for r in rows] == [(0, "a"), (1, None), (2, None), (3, None)]
    assert rows[0].inputs == [{"id": "t", "value": ["x"]}]
    assert rows[1].inputs == [{"id": "t", "value": ["y", "z"]}, {"id": "u", "value": "w"}]
    assert [p.rule for p in rows[2].problems] == ["row_shape"]
    assert [p.rule for p in rows[3].problems] == ["custom_id"]


def test_a_body_that_is_not_an_array_or_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="array"):
        parse_body(b'{"t": "x"}', "json")
    with pytest.raises(ValueError, match="JSON"):
        parse_body(b"[1,", "json")
    with pytest.raises(ValueError, match="UTF-8"):
        parse_body(b"\xff\xfe", "csv")


def test_jsonl_skips_blank_lines_and_reports_a_bad_line_as_a_row() -> None:
    rows = parse_body(b'{"t": "a"}\n\n{not json}\n{"custom_id": "c", "t": "b"}\n', "jsonl")
    assert [(r.row_index, r.custom_id) for r in rows] == [(0, None), (1, None), (2, "c")]
    assert [p.rule for p in rows[1].problems] == ["json"]
    assert "line 3" in rows[1].problems[0].description


def test_csv_rows() -> None:
    body = b'custom_id,t,u\r\nr1,"a|b, c",x\r\n,,y\r\nr3,too,many,cells\r\n'
    rows = parse_body(body, "csv")
    assert rows[0].custom_id == "r1"
    assert rows[0].inputs == [{"id": "t", "value": ["a", "b, c"]}, {"id": "u", "value": ["x"]}]
    assert rows[1].custom_id is None
    assert rows[1].inputs == [{"id": "u", "value": ["y"]}]  # an empty cell: no value
    assert [p.rule for p in rows[2].problems] == ["csv_cells"]
    assert parse_body(b"", "csv") == []
    with pytest.raises(ValueError, match="header"):
        parse_body(b"t,t\nx,y\n", "csv")


def test_csv_export_line_reads_back() -> None:
    row = ResultRow(
        row_index=3,
        custom_id="c",
        inputs=[{"id": "t", "value": ["a|b", "c"]}],
        status="completed",
        title="T",
        suggestion='said "hi",\nthen left',
        error=None,
    )
    text = ",".join(csv_header(["t", "u"])) + "\n" + csv_line(row, ["t", "u"])
    (read,) = list(csv.DictReader(io.StringIO(text)))
    assert read["row_index"] == "3"
    assert split_cell(read["t"]) == ["a|b", "c"]
    assert read["u"] == ""
    assert read["suggestion"] == 'said "hi",\nthen left'
