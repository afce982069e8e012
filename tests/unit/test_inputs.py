"""Input validation: one Problem per violation, naming the input and the rule."""

from __future__ import annotations

from typing import Any

import pytest

from copydesk.agents import AgentSpec, parse_agent
from copydesk.errors import InvalidInputs, InvalidRequest, Problem
from copydesk.inputs import check_inputs, parse_inputs, validate_inputs


@pytest.fixture
def agent() -> AgentSpec:
    return parse_agent(
        {
            "id": "welcome",
            "name": "Welcome email",
            "prompt": "{{ topics }} {{ tone }} {{ note }} {{ brief }} {{ logo }}",
            "inputs": [
                {
                    "name": "topics",
                    "input_type": "text",
                    "options": {"min_fields": 2, "max_fields": 3},
                },
                {"name": "tone", "input_type": "dropdown", "options": {"list": ["warm", "dry"]}},
                {"name": "note", "input_type": "text", "required": False},
                {"name": "brief", "input_type": "file", "required": False},
                {"name": "logo", "input_type": "media", "required": False},
            ],
        },
        "test",
    )


VALID = [("topics", ["a", "b"]), ("tone", ["warm"])]


def problems(agent: AgentSpec, items: list[tuple[str, list[str]]]) -> list[Problem]:
    with pytest.raises(InvalidInputs) as caught:
        validate_inputs(agent, items)
    assert isinstance(caught.value, InvalidRequest)
    return caught.value.problems


def rules(found: list[Problem]) -> list[tuple[str | None, str]]:
    return [(p.input, p.rule) for p in found]


def test_valid_inputs_are_returned_by_name(agent: AgentSpec) -> None:
    values = validate_inputs(agent, [*VALID, ("note", ["hi"])])

    assert values == {"topics": ["a", "b"], "tone": ["warm"], "note": ["hi"]}


def test_optional_inputs_may_be_absent_or_empty(agent: AgentSpec) -> None:
    assert validate_inputs(agent, VALID) == {"topics": ["a", "b"], "tone": ["warm"]}
    assert validate_inputs(agent, [*VALID, ("note", [])]) == {
        "topics": ["a", "b"],
        "tone": ["warm"],
        "note": [],
    }


def test_unknown_input(agent: AgentSpec) -> None:
    [problem] = problems(agent, [*VALID, ("topic", ["x"])])

    assert (problem.input, problem.rule) == ("topic", "unknown_input")
    assert "'topic' is not an input of this application" in problem.description
    assert "topics, tone, note, brief, logo" in problem.description


def test_missing_required_input(agent: AgentSpec) -> None:
    [problem] = problems(agent, [("topics", ["a", "b"])])

    assert (problem.input, problem.rule) == ("tone", "required")
    assert problem.description == "input 'tone' is required"


def test_required_input_with_no_values_is_missing(agent: AgentSpec) -> None:
    assert rules(problems(agent, [("topics", ["a", "b"]), ("tone", [])])) == [("tone", "required")]


def test_min_fields(agent: AgentSpec) -> None:
    [problem] = problems(agent, [("topics", ["a"]), ("tone", ["warm"])])

    assert (problem.input, problem.rule) == ("topics", "min_fields")
    assert "at least 2 value(s), got 1" in problem.description


def test_max_fields(agent: AgentSpec) -> None:
    [problem] = problems(agent, [("topics", ["a", "b", "c", "d"]), ("tone", ["warm"])])

    assert (problem.input, problem.rule) == ("topics", "max_fields")
    assert "at most 3 value(s), got 4" in problem.description


def test_single_value_input_takes_one_value(agent: AgentSpec) -> None:
    assert rules(problems(agent, [("topics", ["a", "b"]), ("tone", ["warm", "dry"])])) == [
        ("tone", "max_fields")
    ]


def test_dropdown_value_not_in_list(agent: AgentSpec) -> None:
    [problem] = problems(agent, [("topics", ["a", "b"]), ("tone", ["Warm"])])

    assert (problem.input, problem.rule) == ("tone", "dropdown_list")
    assert problem.description == "input 'tone': 'Warm' is not one of the choices (warm, dry)"


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_empty_value(agent: AgentSpec, blank: str) -> None:
    [problem] = problems(agent, [("topics", ["a", blank]), ("tone", ["warm"])])

    assert (problem.input, problem.rule) == ("topics", "empty_value")
    assert "value 1 is empty" in problem.description


def test_duplicate_input(agent: AgentSpec) -> None:
    [problem] = problems(agent, [*VALID, ("tone", ["dry"])])

    assert (problem.input, problem.rule) == ("tone", "duplicate_input")
    assert problem.description == "input 'tone' is given more than once"


@pytest.mark.parametrize("name", ["brief", "logo"])
def test_file_and_media_values_pass_the_schema_check_for_the_attachments_check(
    agent: AgentSpec, name: str
) -> None:
    # Whether the id names a file of the organisation is checked against the store
    # (copydesk.attachments); the schema check keeps the values as given.
    values = validate_inputs(agent, [*VALID, (name, ["file-1"])])

    assert values[name] == ["file-1"]


def test_check_inputs_returns_values_and_problems_together(agent: AgentSpec) -> None:
    values, found = check_inputs(agent, [*VALID, ("brief", ["a", "b", "c", "d", "e", "f"])])

    assert values["brief"] == ["a", "b", "c", "d", "e", "f"]
    assert [p.rule for p in found] == ["max_files"]


def test_several_problems_give_one_problem_each(agent: AgentSpec) -> None:
    found = problems(
        agent,
        [
            ("topics", ["a"]),
            ("colour", ["red"]),
            ("topics", ["b", "c"]),
            ("note", [""]),
            ("logo", ["img", "img2"]),
        ],
    )

    assert rules(found) == [
        ("colour", "unknown_input"),
        ("topics", "duplicate_input"),
        ("topics", "min_fields"),
        ("tone", "required"),
        ("note", "empty_value"),
        ("logo", "max_files"),
    ]


def test_the_error_message_lists_every_problem(agent: AgentSpec) -> None:
    with pytest.raises(InvalidInputs) as caught:
        validate_inputs(agent, [("colour", ["red"])])

    assert str(caught.value) == "; ".join(p.description for p in caught.value.problems)
    assert len(caught.value.problems) == 3


# --- parse_inputs: the wire shape -------------------------------------------------------


def test_parse_inputs_accepts_arrays_and_a_single_string() -> None:
    items, found = parse_inputs(
        [{"id": "topics", "value": ["a", "b"]}, {"id": "tone", "value": "warm"}]
    )

    assert found == []
    assert items == [("topics", ["a", "b"]), ("tone", ["warm"])]


@pytest.mark.parametrize("raw", [None, {}, "topics", {"id": "topics", "value": ["a"]}])
def test_parse_inputs_needs_an_array(raw: Any) -> None:
    assert parse_inputs(raw) == (
        [],
        [Problem("'inputs' must be an array of {id, value} objects", "inputs_type")],
    )


def test_parse_inputs_reports_each_bad_item_and_keeps_the_good_ones() -> None:
    items, found = parse_inputs(
        [
            {"id": "ok", "value": ["x"]},
            "topics",
            {"value": ["x"]},
            {"id": 3, "value": ["x"]},
            {"id": "missing_value"},
            {"id": "numbers", "value": [1, 2]},
            {"id": "object", "value": {"a": "b"}},
        ]
    )

    assert items == [("ok", ["x"])]
    assert [(p.input, p.rule) for p in found] == [
        (None, "input_shape"),
        (None, "input_shape"),
        (None, "input_shape"),
        ("missing_value", "value_type"),
        ("numbers", "value_type"),
        ("object", "value_type"),
    ]
    assert found[0].description == "inputs[1] must be an object with a string 'id'"
    assert found[3].description == "input 'missing_value': 'value' must be an array of strings"
