"""Prompt rendering: lists for multi-value inputs, strings for single ones, and a sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from copydesk.agents import AgentSpec, parse_agent
from copydesk.errors import CopydeskError
from copydesk.prompts import PromptRenderError, render_prompt

INPUTS: list[dict[str, Any]] = [
    {"name": "topics", "input_type": "text", "options": {"max_fields": 3}},
    {"name": "tone", "input_type": "dropdown", "options": {"list": ["warm", "dry"]}},
    {"name": "note", "input_type": "text", "required": False},
    {"name": "extras", "input_type": "text", "required": False, "options": {"max_fields": 2}},
    {"name": "briefs", "input_type": "file", "required": False, "options": {"max_files": 2}},
]


def agent(prompt: str) -> AgentSpec:
    return parse_agent({"name": "a", "prompt": prompt, "inputs": INPUTS}, "test")


def render(prompt: str, **values: list[str]) -> str:
    return render_prompt(agent(prompt), values)


def test_multi_value_inputs_render_as_lists() -> None:
    out = render(
        "{{ topics | join(', ') }}|{{ topics[1] }}|{{ topics | length }}",
        topics=["cats", "dogs"],
        tone=["warm"],
    )

    assert out == "cats, dogs|dogs|2"


def test_single_value_inputs_render_as_strings() -> None:
    out = render("{{ tone }}|{{ tone | length }}|{{ tone | upper }}", topics=["x"], tone=["warm"])

    assert out == "warm|4|WARM"


def test_a_list_with_one_value_is_still_a_list() -> None:
    assert render("{{ topics }}", topics=["only"], tone=["dry"]) == "['only']"


def test_file_inputs_taking_several_files_render_as_lists() -> None:
    assert render("{{ briefs | join('+') }}", topics=["x"], tone=["dry"], briefs=["f1", "f2"]) == (
        "f1+f2"
    )


def test_absent_optional_inputs_render_empty() -> None:
    out = render("[{{ note }}][{{ extras | join(',') }}][{{ extras | length }}]", topics=["x"])

    assert out == "[][][0]"


def test_values_are_not_escaped_and_trailing_newlines_kept() -> None:
    out = render("<p>{{ tone }}</p>\n", topics=["x"], tone=["<b>&'\"</b>"])

    assert out == "<p><b>&'\"</b></p>\n"


def test_control_flow_works_on_lists() -> None:
    out = render("{% for t in topics %}- {{ t }}\n{% endfor %}", topics=["a", "b"], tone=["dry"])

    assert out == "- a\n- b\n"


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ tone.__class__ }}",
        "{{ tone.__class__.__mro__ }}",
        "{{ tone.__class__.__base__.__subclasses__() }}",
        "{{ tone | attr('__class__') }}",
        "{{ '{0.__class__}'.format(tone) }}",
        "{% set c = tone.__class__ %}{{ c }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ self._TemplateReference__context }}",
        "{{ topics.append('x') }}",
    ],
)
def test_the_sandbox_refuses_unsafe_access(prompt: str) -> None:
    with pytest.raises(PromptRenderError, match="unsafe"):
        render(prompt, topics=["x"], tone=["dry"])


def test_the_dunder_payload_on_a_literal_is_refused() -> None:
    spec = parse_agent({"name": "a", "prompt": "{{ ''.__class__.__mro__ }}"}, "test")

    with pytest.raises(PromptRenderError, match="unsafe"):
        render_prompt(spec, {})


@pytest.mark.parametrize("name", ["os", "config", "settings", "environ", "__builtins__"])
def test_names_outside_the_inputs_cannot_be_reached(name: str) -> None:
    # Built without parse_agent, so the template check does not stop it first.
    spec = AgentSpec.model_validate({"name": "a", "prompt": "{{ " + name + " }}"})

    with pytest.raises(PromptRenderError, match="undefined"):
        render_prompt(spec, {})


def test_strict_undefined_refuses_missing_attributes() -> None:
    with pytest.raises(PromptRenderError, match="has no attribute 'missing'"):
        render("{{ tone.missing }}", topics=["x"], tone=["dry"])


def test_strict_undefined_refuses_an_index_past_the_end() -> None:
    with pytest.raises(PromptRenderError):
        render("{{ topics[5] }}", topics=["x"], tone=["dry"])


def test_render_errors_are_copydesk_errors() -> None:
    with pytest.raises(CopydeskError, match="the prompt template failed to render"):
        render("{{ tone.missing }}", topics=["x"], tone=["dry"])


@pytest.mark.parametrize(
    "template",
    ["{{ 2 ** 200 }}", "{{ 'x' * 10**6 }}", "{{ [1] * 1000000 }}", "{{ 10**7 * 'ab' }}"],
)
def test_sandbox_bounds_cpu_and_memory_heavy_operators(template: str) -> None:
    spec = parse_agent({"name": "greedy", "prompt": template}, "greedy.yaml")
    with pytest.raises(PromptRenderError, match=r"not allowed|larger than"):
        render_prompt(spec, {})


def test_sandbox_still_allows_small_arithmetic_and_repetition() -> None:
    spec = parse_agent(
        {"name": "ok", "prompt": "{{ 3 * 4 }} {{ 2 ** 10 }} {{ 'ab' * 3 }}"}, "ok.yaml"
    )
    assert render_prompt(spec, {}) == "12 1024 ababab"


def test_renders_share_the_globals_but_not_what_a_template_sets() -> None:
    # Each render gets its own context: a name one render sets (or shadows) is gone in the
    # next, and the environment's globals (range, namespace) are there every time.
    prompt = (
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}{% set range = tone %}{{ range }}"
    )
    first = render(prompt, topics=["x"], tone=["dry"])
    second = render(prompt, topics=["x"], tone=["warm"])

    assert (first, second) == ("3dry", "3warm")
