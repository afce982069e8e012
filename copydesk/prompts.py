"""Prompt rendering in Jinja2's sandbox: a template can read its inputs and nothing else."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from copydesk.errors import CopydeskError

if TYPE_CHECKING:
    from jinja2 import Template

    from copydesk.agents import AgentSpec

RenderValue = str | list[str]


class PromptRenderError(CopydeskError):
    """The template failed at render time (for example it indexed past a list's end)."""


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


@lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    return _environment().from_string(source)


def check_template(spec: AgentSpec) -> list[str]:
    """Problems with the template: syntax errors and names that are not inputs."""
    env = _environment()
    try:
        ast = env.parse(spec.prompt)
    except TemplateError as exc:
        return [f"field 'prompt': template syntax error: {exc}"]
    names = {i.name for i in spec.inputs}
    unknown = sorted(meta.find_undeclared_variables(ast) - names)
    return [
        f"field 'prompt': refers to {name!r}, which is not an input; "
        f"declare it under inputs or use one of: {', '.join(sorted(names)) or '(none)'}"
        for name in unknown
    ]


def render_prompt(spec: AgentSpec, values: dict[str, list[str]]) -> str:
    """Render the agent's prompt. Inputs that can take several values render as lists."""
    context: dict[str, RenderValue] = {}
    for item in spec.inputs:
        given = values.get(item.name, [])
        context[item.name] = list(given) if item.is_list else (given[0] if given else "")
    try:
        return _compiled(spec.prompt).render(context)
    except TemplateError as exc:
        raise PromptRenderError(f"the prompt template failed to render: {exc}") from exc
