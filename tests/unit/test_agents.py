"""Agent definitions: validation errors a person can act on, and every option filled in."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from copydesk.agents import (
    AgentSpec,
    DropdownOptions,
    FileOptions,
    MediaOptions,
    TextOptions,
    load_agent_file,
    parse_agent,
)
from copydesk.errors import AgentDefinitionInvalid

SOURCE = "agents/welcome.yaml"


def definition(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "Welcome email",
        "description": "Writes a welcome email",
        "prompt": "Write a {{ tone }} welcome email about {{ topics | join(', ') }}.",
        "inputs": [
            {"name": "topics", "input_type": "text", "options": {"min_fields": 1, "max_fields": 3}},
            {"name": "tone", "input_type": "dropdown", "options": {"list": ["warm", "formal"]}},
        ],
        "model": {"provider": "deterministic", "name": "echo"},
        "parameters": {"temperature": 0.3, "max_tokens": 200},
    }
    document.update(changes)
    return document


def problems_of(document: Any) -> list[str]:
    with pytest.raises(AgentDefinitionInvalid) as caught:
        parse_agent(document, SOURCE)
    error = caught.value
    assert error.source == SOURCE
    assert str(error).startswith(f"{SOURCE}: ")
    return error.problems


def test_parse_a_valid_definition() -> None:
    spec = parse_agent(definition(id="welcome"), SOURCE)

    assert spec.id == "welcome"
    assert spec.name == "Welcome email"
    assert [(i.name, i.input_type, i.required) for i in spec.inputs] == [
        ("topics", "text", True),
        ("tone", "dropdown", True),
    ]
    assert spec.inputs[0].options == TextOptions(min_fields=1, max_fields=3)
    assert spec.inputs[1].options == DropdownOptions(list=["warm", "formal"])
    assert (spec.model.provider, spec.model.name) == ("deterministic", "echo")
    assert (spec.parameters.temperature, spec.parameters.max_tokens) == (0.3, 200)
    assert spec.output.title == "Output"


def test_a_definition_survives_its_document_round_trip() -> None:
    spec = parse_agent(definition(id="welcome"), SOURCE)

    assert AgentSpec.model_validate(spec.to_document()) == spec


def test_missing_name() -> None:
    document = definition()
    del document["name"]

    assert problems_of(document) == ["field 'name' is required: add it"]


def test_unknown_field() -> None:
    assert problems_of(definition(colour="blue")) == [
        "field 'colour' is not a known field: remove it or check its spelling"
    ]


def test_unknown_option_names_the_full_path() -> None:
    inputs = [{"name": "topics", "input_type": "text", "options": {"max_field": 3}}]

    assert problems_of(definition(inputs=inputs, prompt="{{ topics }}")) == [
        "field 'inputs.0.options.max_field' is not a known field: remove it or check its spelling"
    ]


def test_bad_input_type() -> None:
    inputs = [{"name": "topics", "input_type": "video"}]

    [problem] = problems_of(definition(inputs=inputs, prompt="{{ topics }}"))

    assert problem.startswith("field 'inputs.0.input_type': ")
    for allowed in ("'text'", "'dropdown'", "'file'", "'media'"):
        assert allowed in problem


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, "field 'inputs.1': a dropdown input needs options.list with at least one value"),
        ({}, "field 'inputs.1.options.list' is required: add it"),
    ],
    ids=["no-options", "no-list"],
)
def test_dropdown_without_list(options: dict[str, Any] | None, expected: str) -> None:
    tone: dict[str, Any] = {"name": "tone", "input_type": "dropdown"}
    if options is not None:
        tone["options"] = options
    document = definition()
    document["inputs"] = [document["inputs"][0], tone]

    assert problems_of(document) == [expected]


def test_dropdown_with_an_empty_list() -> None:
    document = definition()
    document["inputs"][1]["options"] = {"list": []}

    [problem] = problems_of(document)

    assert problem.startswith("field 'inputs.1.options.list': ")
    assert "at least 1 item" in problem


def test_min_fields_above_max_fields() -> None:
    document = definition()
    document["inputs"][0]["options"] = {"min_fields": 4, "max_fields": 2}

    assert problems_of(document) == [
        "field 'inputs.0.options': min_fields must not exceed max_fields"
    ]


def test_duplicate_input_names() -> None:
    document = definition()
    document["inputs"].append({"name": "tone", "input_type": "text"})

    assert problems_of(document) == [
        "field 'inputs': input name 'tone' is used twice; rename one of them (names must be unique)"
    ]


def test_bad_input_name() -> None:
    document = definition(prompt="{{ tone }}")
    document["inputs"][0]["name"] = "2topics"

    [problem] = problems_of(document)

    assert problem.startswith("field 'inputs.0.name': input name '2topics' must start with")


def test_prompt_refers_to_an_undeclared_input() -> None:
    assert problems_of(definition(prompt="About {{ topic }} in a {{ tone }} tone")) == [
        "field 'prompt': refers to 'topic', which is not an input; "
        "declare it under inputs or use one of: tone, topics"
    ]


def test_template_syntax_error() -> None:
    [problem] = problems_of(definition(prompt="About {{ topics "))

    assert problem.startswith("field 'prompt': template syntax error: ")


@pytest.mark.parametrize("bad_id", ["jobs", "a/b", "", "x" * 101])
def test_reserved_or_malformed_id(bad_id: str) -> None:
    [problem] = problems_of(definition(id=bad_id))

    assert problem.startswith("field 'id': ")
    assert "'jobs' (reserved by the jobs routes)" in problem


def test_several_problems_are_reported_together() -> None:
    document = definition(colour="blue")
    del document["name"]

    assert problems_of(document) == [
        "field 'name' is required: add it",
        "field 'colour' is not a known field: remove it or check its spelling",
    ]


@pytest.mark.parametrize("document", [None, [], "name: x", 3])
def test_the_file_must_hold_a_mapping(document: Any) -> None:
    assert problems_of(document) == ["the file must hold a mapping (name:, prompt:, ...)"]


@pytest.mark.parametrize(
    ("input_type", "given", "expected"),
    [
        ("text", None, {"min_fields": 1, "max_fields": 1}),
        ("text", {"max_fields": 4}, {"min_fields": 1, "max_fields": 4}),
        ("dropdown", {"list": ["a"]}, {"list": ["a"]}),
        (
            "file",
            None,
            {
                "max_files": 1,
                "file_types": ["pdf", "docx", "txt", "csv", "html", "pptx", "xlsx", "eml"],
                "max_word_count": 20000,
                "max_file_size_mb": 10,
                "upload_types": ["file_id"],
            },
        ),
        (
            "file",
            {"max_files": 2, "upload_types": ["url"]},
            {
                "max_files": 2,
                "file_types": ["pdf", "docx", "txt", "csv", "html", "pptx", "xlsx", "eml"],
                "max_word_count": 20000,
                "max_file_size_mb": 10,
                "upload_types": ["url"],
            },
        ),
        ("media", None, {"file_types": ["jpg", "png"], "max_image_size_mb": 5}),
        ("media", {"max_image_size_mb": 1}, {"file_types": ["jpg", "png"], "max_image_size_mb": 1}),
    ],
)
def test_options_are_filled_with_every_field(
    input_type: str, given: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    item: dict[str, Any] = {"name": "x", "input_type": input_type}
    if given is not None:
        item["options"] = given

    spec = parse_agent({"name": "n", "prompt": "{{ x }}", "inputs": [item]}, SOURCE)

    model = {
        "text": TextOptions,
        "dropdown": DropdownOptions,
        "file": FileOptions,
        "media": MediaOptions,
    }
    assert type(spec.inputs[0].options) is model[input_type]
    assert spec.to_document()["inputs"][0]["options"] == expected


def test_options_of_another_type_are_refused() -> None:
    inputs = [{"name": "x", "input_type": "text", "options": {"list": ["a"]}}]

    assert problems_of({"name": "n", "prompt": "{{ x }}", "inputs": inputs}) == [
        "field 'inputs.0.options.list' is not a known field: remove it or check its spelling"
    ]


def test_load_agent_file_writes_a_generated_id_back_once(tmp_path: Path) -> None:
    path = tmp_path / "welcome.yaml"
    original = yaml.safe_dump(definition(), sort_keys=False)
    path.write_text(original, encoding="utf-8")

    first = load_agent_file(path)
    written = path.read_text(encoding="utf-8")
    second = load_agent_file(path)

    assert first.id is not None
    assert str(uuid.UUID(first.id)) == first.id
    assert written == f"id: {first.id}\n{original}"
    assert second.id == first.id
    assert path.read_text(encoding="utf-8") == written
    assert second == first


def test_load_agent_file_without_write_back_leaves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "welcome.yaml"
    original = yaml.safe_dump(definition(), sort_keys=False)
    path.write_text(original, encoding="utf-8")

    spec = load_agent_file(path, write_back_id=False)

    assert spec.id is not None
    assert path.read_text(encoding="utf-8") == original


def test_load_agent_file_keeps_an_id_it_already_has(tmp_path: Path) -> None:
    path = tmp_path / "welcome.yaml"
    original = yaml.safe_dump(definition(id="welcome"), sort_keys=False)
    path.write_text(original, encoding="utf-8")

    assert load_agent_file(path).id == "welcome"
    assert path.read_text(encoding="utf-8") == original


def test_load_agent_file_names_the_file_on_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")

    with pytest.raises(AgentDefinitionInvalid) as caught:
        load_agent_file(path)

    assert caught.value.source == str(path)
    assert caught.value.problems[0].startswith("not valid YAML: ")
    assert path.read_text(encoding="utf-8") == "name: [unclosed\n"


def test_load_agent_file_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"

    with pytest.raises(AgentDefinitionInvalid) as caught:
        load_agent_file(path)

    assert caught.value.source == str(path)
    assert caught.value.problems[0].startswith("cannot read the file: ")


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("---\nname: A\nprompt: hi\n", "---\nid: {id}\nname: A\nprompt: hi\n"),
        (
            "%YAML 1.1\n--- # agent\nname: A\nprompt: hi\n",
            "%YAML 1.1\n--- # agent\nid: {id}\nname: A\nprompt: hi\n",
        ),
        ("name: A\nid:\nprompt: hi\n", "name: A\nid: {id}\nprompt: hi\n"),
        (
            "id: null  # set on first deploy\nname: A\nprompt: hi\n",
            "id: {id}\nname: A\nprompt: hi\n",
        ),
        ("id: ~\nname: A\nprompt: hi\n", "id: {id}\nname: A\nprompt: hi\n"),
        (
            "# the welcome agent\nname: A\nprompt: hi\n",
            "id: {id}\n# the welcome agent\nname: A\nprompt: hi\n",
        ),
    ],
    ids=["document-start", "directive", "blank-id", "null-id", "tilde-id", "comment"],
)
def test_the_written_back_id_holds_whatever_the_file_looks_like(
    tmp_path: Path, original: str, expected: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(original, encoding="utf-8")

    first = load_agent_file(path)
    second = load_agent_file(path)
    third = load_agent_file(path)

    assert first.id is not None
    assert path.read_text(encoding="utf-8") == expected.format(id=first.id)
    assert second.id == third.id == first.id
