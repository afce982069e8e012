"""Prompt rendering in Jinja2's sandbox: a template can read its inputs and nothing else."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from copydesk.errors import CopydeskError

if TYPE_CHECKING:
    from jinja2 import Template

    from copydesk.agents import AgentSpec

RenderValue = str | list[str]


class PromptRenderError(CopydeskError):
    """The template failed at render time (for example it indexed past a list's end)."""


MAX_POWER = 64
MAX_REPEAT = 10_000


class PromptSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, plus bounds on ``**`` and ``*`` so a template cannot
    burn CPU or memory (``{{ 2 ** 10**9 }}``, ``{{ 'x' * 10**9 }}``)."""

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER:
            raise SecurityError(f"exponent {right} is larger than {MAX_POWER}")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and count * max(1, len(seq)) > MAX_REPEAT
                ):
                    raise SecurityError("repeating a value that many times is not allowed")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def _environment() -> PromptSandbox:
    return PromptSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    template = _environment().from_string(source)
    # A template's globals are a ChainMap over the environment's, which ``render`` copies
    # into every context (two walks of the chain: 70 % of rendering a short prompt). The
    # environment's globals never change once made, so one flat copy reads the same.
    template.globals = dict(template.globals)
    return template


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
