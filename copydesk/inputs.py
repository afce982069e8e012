"""Input validation against an agent's schema, before anything is stored or generated.

Every violation becomes one :class:`~copydesk.errors.Problem` naming the input and the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from copydesk.agents import AgentSpec, DropdownOptions, InputSpec
from copydesk.errors import InvalidInputs, Problem


def parse_inputs(raw: Any) -> tuple[list[tuple[str, list[str]]], list[Problem]]:
    """Shape check of the wire ``inputs`` array: ``[{id: str, value: [str, ...]}, ...]``."""
    problems: list[Problem] = []
    items: list[tuple[str, list[str]]] = []
    if not isinstance(raw, list):
        return [], [Problem("'inputs' must be an array of {id, value} objects", "inputs_type")]
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
            problems.append(
                Problem(f"inputs[{index}] must be an object with a string 'id'", "input_shape")
            )
            continue
        name = item["id"]
        value = item.get("value")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(
                Problem(
                    f"input '{name}': 'value' must be an array of strings",
                    "value_type",
                    input=name,
                )
            )
            continue
        items.append((name, list(value)))
    return items, problems


def validate_inputs(
    agent: AgentSpec, items: Iterable[tuple[str, list[str]]]
) -> dict[str, list[str]]:
    """Check inputs against the agent's schema; return values by input name or raise."""
    values, problems = check_inputs(agent, items)
    if problems:
        raise InvalidInputs(problems)
    return values


def check_inputs(
    agent: AgentSpec, items: Iterable[tuple[str, list[str]]]
) -> tuple[dict[str, list[str]], list[Problem]]:
    """Values by input name, and every problem with them. File and media values are
    checked only for their count and shape here; what they name is checked by
    :class:`copydesk.attachments.Attachments`."""
    problems: list[Problem] = []
    values: dict[str, list[str]] = {}
    for name, given in items:
        spec = agent.input(name)
        if spec is None:
            known = ", ".join(i.name for i in agent.inputs) or "(none)"
            problems.append(
                Problem(
                    f"input '{name}' is not an input of this application (inputs: {known})",
                    "unknown_input",
                    input=name,
                )
            )
            continue
        if name in values:
            problems.append(
                Problem(f"input '{name}' is given more than once", "duplicate_input", input=name)
            )
            continue
        values[name] = given

    for spec in agent.inputs:
        present = values.get(spec.name)
        if not present:
            if spec.required:
                problems.append(
                    Problem(f"input '{spec.name}' is required", "required", input=spec.name)
                )
            continue
        problems.extend(_check_one(spec, present))
    return values, problems


def _check_one(spec: InputSpec, given: list[str]) -> list[Problem]:
    problems: list[Problem] = []
    empty = [i for i, v in enumerate(given) if not v.strip()]
    if empty:
        problems.append(
            Problem(
                f"input '{spec.name}': value {empty[0]} is empty; every value needs text",
                "empty_value",
                input=spec.name,
            )
        )
    if len(given) < spec.min_values:
        problems.append(
            Problem(
                f"input '{spec.name}' needs at least {spec.min_values} value(s), got {len(given)}",
                "min_fields",
                input=spec.name,
            )
        )
    if len(given) > spec.max_values:
        rule = "max_files" if spec.input_type in ("file", "media") else "max_fields"
        problems.append(
            Problem(
                f"input '{spec.name}' takes at most {spec.max_values} value(s), got {len(given)}",
                rule,
                input=spec.name,
            )
        )
    if isinstance(spec.options, DropdownOptions):
        allowed = spec.options.list
        for v in given:
            if v not in allowed:
                problems.append(
                    Problem(
                        f"input '{spec.name}': {v!r} is not one of the choices "
                        f"({', '.join(allowed)})",
                        "dropdown_list",
                        input=spec.name,
                    )
                )
    return problems
