"""Agent operations: deploy definitions, list and read deployed agents, link graphs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from copydesk.agents import AgentSpec, agent_files, load_agent_file
from copydesk.errors import AgentDefinitionInvalid, ApplicationNotFound, InvalidRequest, Problem
from copydesk.provider import Providers
from copydesk.store import Agent, CursorPage, CursorQuery, Store

MAX_PAGE = 100


@dataclass(frozen=True)
class Deployed:
    source: str
    agent: Agent
    changed: bool = True


class Catalog:
    def __init__(self, store: Store, providers: Providers) -> None:
        self._store = store
        self._providers = providers
        self._versions: dict[tuple[str, str, int], asyncio.Future[Agent | None]] = {}

    def check(self, spec: AgentSpec, source: str) -> None:
        """Checks that need the running configuration (the provider must exist)."""
        if spec.model.provider is not None and spec.model.provider not in self._providers.names():
            raise AgentDefinitionInvalid(
                source,
                [
                    f"field 'model.provider': {spec.model.provider!r} is not a configured "
                    f"provider; use one of: {', '.join(self._providers.names())}"
                ],
            )

    def load_files(self, paths: Sequence[Path]) -> list[tuple[str, AgentSpec]]:
        """Validate every file first; raise with every file's problems before deploying any."""
        loaded: list[tuple[str, AgentSpec]] = []
        failures: list[AgentDefinitionInvalid] = []
        files = agent_files(list(paths))
        if not files:
            raise AgentDefinitionInvalid(
                ", ".join(map(str, paths)) or "(no path)", ["no *.yaml or *.yml agent file found"]
            )
        for path in files:
            try:
                spec = load_agent_file(path)
                self.check(spec, str(path))
                loaded.append((str(path), spec))
            except AgentDefinitionInvalid as exc:
                failures.append(exc)
        if failures:
            raise AgentDefinitionInvalid("agent files", [str(f) for f in failures]) from failures[0]
        return loaded

    async def deploy(
        self, org_id: str, spec: AgentSpec, source: str = "api", *, only_if_changed: bool = False
    ) -> Deployed:
        """Store ``spec`` as a new version. ``only_if_changed`` keeps an identical current one."""
        self.check(spec, source)
        if only_if_changed and spec.id is not None:
            current = await self._store.get_agent(org_id, spec.id)
            if current is not None and current.spec == spec and current.status == "deployed":
                return Deployed(source=source, agent=current, changed=False)
        return Deployed(source=source, agent=await self._store.deploy_agent(org_id, spec))

    async def deploy_files(
        self, org_id: str, paths: Sequence[Path], *, only_if_changed: bool = False
    ) -> list[Deployed]:
        loaded = self.load_files(paths)
        return [
            await self.deploy(org_id, spec, src, only_if_changed=only_if_changed)
            for src, spec in loaded
        ]

    async def get(self, org_id: str, agent_id: str, version: int | None = None) -> Agent:
        if version is not None:
            return await self._version(org_id, agent_id, version)
        agent = await self._store.get_agent(org_id, agent_id, version)
        if agent is None or agent.status != "deployed":
            raise ApplicationNotFound(agent_id)
        return agent

    async def _version(self, org_id: str, agent_id: str, version: int) -> Agent:
        """A pinned version, read once per process: versions are immutable. Concurrent
        first reads share one query."""
        key = (org_id, agent_id, version)
        pending = self._versions.get(key)
        if pending is not None and pending.done() and not pending.cancelled():
            cached = pending.result() if pending.exception() is None else None
            if cached is not None:
                return cached  # the common case on a worker: no new future per job
        if pending is None:
            pending = asyncio.ensure_future(self._store.get_agent(org_id, agent_id, version))
            if len(self._versions) >= 1024:
                self._versions.pop(next(iter(self._versions)))
            self._versions[key] = pending
        try:
            agent = await asyncio.shield(pending)
        except BaseException:
            if pending.done():
                self._versions.pop(key, None)
            raise
        if agent is None:
            self._versions.pop(key, None)
            raise ApplicationNotFound(agent_id)
        return agent

    async def page(self, org_id: str, query: CursorQuery) -> CursorPage[Agent]:
        if not 0 <= query.limit <= MAX_PAGE:
            raise InvalidRequest(
                [Problem(f"'limit' must be between 0 and {MAX_PAGE}", "limit", input="limit")]
            )
        return await self._store.list_agents(org_id, query)

    async def graphs(self, org_id: str, agent_id: str) -> list[str]:
        return (await self.get(org_id, agent_id)).graph_ids

    async def set_graphs(self, org_id: str, agent_id: str, graph_ids: list[str]) -> list[str]:
        await self.get(org_id, agent_id)
        stored = await self._store.set_agent_graphs(
            org_id, agent_id, list(dict.fromkeys(graph_ids))
        )
        if stored is None:
            raise ApplicationNotFound(agent_id)
        return stored
