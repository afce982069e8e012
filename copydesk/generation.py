"""Synchronous generation: validate inputs, render the prompt, call the provider, record usage.

The job engine reuses :meth:`Generator.prepare` and :meth:`Generator.run`, so a job and
a synchronous call go through the same validation and rendering.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from copydesk.attachments import Attachments, Resolved
from copydesk.catalog import Catalog
from copydesk.errors import InvalidInputs, Problem
from copydesk.inputs import check_inputs, parse_inputs
from copydesk.prompts import render_prompt
from copydesk.provider import (
    Generation,
    GenerationRequest,
    Message,
    Provider,
    Providers,
    StreamEnd,
    TextDelta,
    Usage,
)
from copydesk.store import Agent, GenerationRecord, Store


@dataclass(frozen=True)
class Validated:
    """A call whose inputs match the agent's schema (and name usable files)."""

    agent: Agent
    values: dict[str, list[str]]
    provider: str


@dataclass(frozen=True)
class Prepared(Validated):
    """A validated call, its files read, ready for a provider."""

    request: GenerationRequest


@dataclass(frozen=True)
class Answer:
    title: str
    suggestion: str
    generation: Generation


def build_request(
    agent: Agent,
    values: dict[str, list[str]],
    default_model: str | None,
    resolved: Resolved | None = None,
) -> GenerationRequest:
    """The provider request: the rendered prompt (file inputs render as their text) and,
    when there are images, OpenAI-style content parts with the images after the text."""
    spec = agent.spec
    messages: list[Message] = []
    if spec.parameters.system:
        messages.append(Message("system", spec.parameters.system))
    rendered = render_prompt(spec, {**values, **(resolved.texts if resolved else {})})
    if resolved and resolved.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": rendered}]
        parts.extend(
            {"type": "image_url", "image_url": {"url": image.data_url()}}
            for image in resolved.images
        )
        messages.append(Message("user", parts))
    else:
        messages.append(Message("user", rendered))
    return GenerationRequest(
        messages=messages,
        model=spec.model.name or default_model,
        temperature=spec.parameters.temperature,
        max_tokens=spec.parameters.max_tokens,
        top_p=spec.parameters.top_p,
        stop=list(spec.parameters.stop),
    )


class Generator:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        providers: Providers,
        attachments: Attachments,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._providers = providers
        self._attachments = attachments

    async def validate(
        self, org_id: str, agent_id: str, raw_inputs: Any, version: int | None = None
    ) -> Validated:
        """Check a call without reading any file: what accepting a job needs."""
        agent = await self._catalog.get(org_id, agent_id, version)
        items, shape_problems = parse_inputs(raw_inputs)
        if shape_problems:
            raise InvalidInputs(shape_problems)
        values, problems = check_inputs(agent.spec, items)
        provider = self._providers.resolve_name(agent.spec.model.provider)
        if agent.spec.has_files:
            images_ok = self._providers.capabilities(provider).images
            problems += await self._attachments.check(
                org_id, agent.spec, values, images_ok=images_ok
            )
        if problems:
            raise InvalidInputs(problems)
        return Validated(agent, values, provider)

    async def validate_many(
        self, org_id: str, agent_id: str, rows: Sequence[Any]
    ) -> tuple[Agent, str, list[tuple[dict[str, list[str]], list[Problem]]]]:
        """:meth:`validate` for many calls of one agent (a batch): the agent and its
        provider are looked up once; every row gets its values and problems, none raised."""
        agent = await self._catalog.get(org_id, agent_id)
        provider = self._providers.resolve_name(agent.spec.model.provider)
        images_ok = agent.spec.has_files and self._providers.capabilities(provider).images
        checked: list[tuple[dict[str, list[str]], list[Problem]]] = []
        for index, raw in enumerate(rows):
            if index % 1000 == 999:
                await asyncio.sleep(0)  # a large batch: let other requests run meanwhile
            items, problems = parse_inputs(raw)
            if problems:
                checked.append(({}, problems))
                continue
            values, problems = check_inputs(agent.spec, items)
            if agent.spec.has_files:
                problems += await self._attachments.check(
                    org_id, agent.spec, values, images_ok=images_ok
                )
            checked.append((values, problems))
        return agent, provider, checked

    async def prepare(
        self, org_id: str, agent_id: str, raw_inputs: Any, version: int | None = None
    ) -> Prepared:
        """Validate, then read the files (waiting for ones still being processed)."""
        checked = await self.validate(org_id, agent_id, raw_inputs, version)
        return await self._ready(org_id, checked)

    async def prepare_job(
        self, org_id: str, agent_id: str, version: int, inputs: list[dict[str, Any]]
    ) -> Prepared:
        """A stored job's call. Its inputs were validated when it was accepted, against
        this same immutable agent version, so only its files are read (and re-checked:
        one may have been deleted since) before the request is built."""
        agent = await self._catalog.get(org_id, agent_id, version)
        values = {str(item["id"]): list(item["value"]) for item in inputs}
        provider = self._providers.resolve_name(agent.spec.model.provider)
        return await self._ready(org_id, Validated(agent, values, provider))

    async def _ready(self, org_id: str, call: Validated) -> Prepared:
        """Read the call's files (if its agent takes any) and build the provider request."""
        agent, values = call.agent, call.values
        resolved = (
            await self._attachments.resolve(org_id, agent.spec, values)
            if agent.spec.has_files
            else None
        )
        default_model = self._providers.settings_of(call.provider).model
        request = build_request(agent, values, default_model, resolved)
        return Prepared(agent, values, call.provider, request)

    async def provider(self, prepared: Prepared) -> Provider:
        """The (opened) provider a prepared call goes to."""
        return await self._providers.get(prepared.provider)

    async def run(self, prepared: Prepared) -> Generation:
        provider = await self.provider(prepared)
        return await provider.generate(prepared.request)

    async def generate(self, prepared: Prepared) -> Answer:
        generation = await self.run(prepared)
        await self._record(
            prepared, generation.model, generation.usage, generation.latency_s, False
        )
        return Answer(prepared.agent.spec.output.title, generation.text, generation)

    async def stream(self, prepared: Prepared) -> AsyncIterator[str]:
        """Text pieces as the provider makes them; usage is recorded when the stream ends."""
        provider = await self._providers.get(prepared.provider)
        started = time.perf_counter()
        async for event in provider.stream(prepared.request):
            if isinstance(event, TextDelta):
                if event.text:
                    yield event.text
            elif isinstance(event, StreamEnd):
                await self._record(
                    prepared, event.model, event.usage, time.perf_counter() - started, True
                )

    async def _record(
        self, prepared: Prepared, model: str, usage: Usage, latency_s: float, streamed: bool
    ) -> None:
        await self._store.record_generation(
            GenerationRecord(
                id=str(uuid.uuid4()),
                org_id=prepared.agent.org_id,
                agent_id=prepared.agent.id,
                agent_version=prepared.agent.version,
                provider=prepared.provider,
                model=model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                latency_ms=round(latency_s * 1000),
                streamed=streamed,
                created_at=datetime.now(UTC),
            )
        )
