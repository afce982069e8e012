"""Synchronous generation: validate inputs, render the prompt, call the provider, record usage.

The job engine reuses :meth:`Generator.prepare` and :meth:`Generator.run`, so a job and
a synchronous call go through the same validation and rendering.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from copydesk.catalog import Catalog
from copydesk.errors import InvalidInputs
from copydesk.inputs import FileChecker, parse_inputs, reject_files, validate_inputs
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
class Prepared:
    """A validated call, ready for a provider."""

    agent: Agent
    values: dict[str, list[str]]
    provider: str
    request: GenerationRequest


@dataclass(frozen=True)
class Answer:
    title: str
    suggestion: str
    generation: Generation


def build_request(
    agent: Agent, values: dict[str, list[str]], default_model: str | None
) -> GenerationRequest:
    spec = agent.spec
    messages: list[Message] = []
    if spec.parameters.system:
        messages.append(Message("system", spec.parameters.system))
    messages.append(Message("user", render_prompt(spec, values)))
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
        check_files: FileChecker = reject_files,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._providers = providers
        self._check_files = check_files

    async def prepare(
        self, org_id: str, agent_id: str, raw_inputs: Any, version: int | None = None
    ) -> Prepared:
        agent = await self._catalog.get(org_id, agent_id, version)
        items, shape_problems = parse_inputs(raw_inputs)
        if shape_problems:
            raise InvalidInputs(shape_problems)
        values = validate_inputs(agent.spec, items, check_files=self._check_files)
        provider = self._providers.resolve_name(agent.spec.model.provider)
        default_model = self._providers.settings_of(provider).model
        return Prepared(agent, values, provider, build_request(agent, values, default_model))

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
