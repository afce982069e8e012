"""The ``Provider`` port and the registry that providers, built-in or third-party, join.

A provider turns a rendered prompt into text. Built-ins (``embedded``, ``openai``,
``deterministic``) are registered through the ``copydesk.providers`` entry-point group,
exactly as a plugin package would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from copydesk.errors import ConfigurationError

if TYPE_CHECKING:
    from copydesk.config import ProviderSettings, Settings


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str | list[dict[str, Any]]


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[Message]
    model: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Generation:
    text: str
    usage: Usage
    model: str
    latency_s: float = 0.0
    finish_reason: str | None = None


@dataclass(frozen=True)
class TextDelta:
    """One piece of streamed text."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The last event of a stream: token usage and the model that answered."""

    usage: Usage
    model: str
    finish_reason: str | None = None


StreamEvent = TextDelta | StreamEnd


@dataclass(frozen=True)
class Capabilities:
    streaming: bool = True
    images: bool = False
    #: True when the provider's output does not change between calls (tests, demos).
    deterministic: bool = False


@runtime_checkable
class Provider(Protocol):
    """A model behind Copydesk. Failures raise the ``ProviderError`` subclasses."""

    name: str
    capabilities: Capabilities

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]: ...


#: A factory builds a provider from its name, its settings and the global settings.
ProviderFactory = Callable[[str, "ProviderSettings", "Settings"], Provider]

ENTRY_POINT_GROUP = "copydesk.providers"


class ProviderRegistry:
    """Kinds of provider by name. ``load_entry_points`` adds the installed ones."""

    def __init__(self) -> None:
        self._factories: dict[str, ProviderFactory] = {}
        self._entry_points: dict[str, EntryPoint] = {}

    def register(self, kind: str, factory: ProviderFactory) -> None:
        self._factories[kind] = factory

    def kinds(self) -> list[str]:
        return sorted({*self._factories, *self._entry_points})

    def load_entry_points(self) -> ProviderRegistry:
        """Note the installed providers; each module is imported only when first built."""
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self._entry_points.setdefault(ep.name, ep)
        return self

    def factory(self, kind: str) -> ProviderFactory | None:
        if kind not in self._factories and kind in self._entry_points:
            self._factories[kind] = self._entry_points[kind].load()
        return self._factories.get(kind)

    def build(self, name: str, config: ProviderSettings, settings: Settings) -> Provider:
        factory = self.factory(config.kind)
        if factory is None:
            raise ConfigurationError(
                f"provider {name!r} has kind {config.kind!r}, which is not installed "
                f"(known kinds: {', '.join(self.kinds()) or 'none'})"
            )
        return factory(name, config, settings)


class Providers:
    """The configured providers of one running Copydesk, opened lazily on first use."""

    def __init__(self, registry: ProviderRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings
        self._built: dict[str, Provider] = {}
        self._opened: set[str] = set()
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return sorted(self._settings.providers)

    def settings_of(self, name: str) -> ProviderSettings:
        return self._settings.providers[name]

    def resolve_name(self, name: str | None) -> str:
        chosen = name or self._settings.default_provider
        if chosen not in self._settings.providers:
            raise ConfigurationError(
                f"provider {chosen!r} is not configured (configured: {', '.join(self.names())})"
            )
        return chosen

    def capabilities(self, name: str | None) -> Capabilities:
        """What a provider can do, without opening it (no connection, no model load)."""
        chosen = self.resolve_name(name)
        provider = self._built.get(chosen)
        if provider is None:
            provider = self._registry.build(
                chosen, self._settings.providers[chosen], self._settings
            )
            self._built[chosen] = provider
        return provider.capabilities

    async def get(self, name: str | None) -> Provider:
        chosen = self.resolve_name(name)
        if chosen in self._opened:
            return self._built[chosen]
        async with self._lock:  # open each provider once, even under concurrent first calls
            provider = self._built.get(chosen)
            if provider is None:
                config = self._settings.providers[chosen]
                provider = self._registry.build(chosen, config, self._settings)
                self._built[chosen] = provider
            if chosen not in self._opened:
                await provider.open()
                self._opened.add(chosen)
            return provider

    async def close(self) -> None:
        for name in list(self._opened):
            await self._built[name].close()
        self._opened.clear()
        self._built.clear()
