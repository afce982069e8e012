"""A deterministic provider for demos and tests: the same prompt always gives the same text.

It writes a short, readable answer derived from the prompt (no model involved), counts
tokens as whitespace-separated words, and can simulate latency through
``options: {latency_s: 0.05}``. It is a real implementation of the port, not a mock.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from copydesk.provider import (
    Capabilities,
    Generation,
    GenerationRequest,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

if TYPE_CHECKING:
    from copydesk.config import ProviderSettings, Settings


def _text_of(messages: list[Message]) -> str:
    parts: list[str] = []
    for message in messages:
        if isinstance(message.content, str):
            parts.append(message.content)
        else:
            parts.extend(str(p.get("text", "")) for p in message.content if p.get("type") == "text")
    return "\n".join(parts)


def _count(text: str) -> int:
    return len(text.split())


class DeterministicProvider:
    capabilities = Capabilities(streaming=True, images=True, deterministic=True)

    def __init__(self, name: str, model: str = "echo", latency_s: float = 0.0) -> None:
        self.name = name
        self.model = model
        self.latency_s = latency_s

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def answer(self, request: GenerationRequest) -> str:
        prompt = _text_of(request.messages)
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        words = prompt.split()
        body = " ".join(words[: max(1, min(len(words), request.max_tokens - 4))])
        return f"[{digest}] {body}".strip()

    async def generate(self, request: GenerationRequest) -> Generation:
        started = time.perf_counter()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = self.answer(request)
        usage = Usage(_count(_text_of(request.messages)), _count(text))
        return Generation(
            text=text,
            usage=usage,
            model=request.model or self.model,
            latency_s=time.perf_counter() - started,
            finish_reason="stop",
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        text = self.answer(request)
        words = text.split(" ")
        for index, word in enumerate(words):
            if self.latency_s:
                await asyncio.sleep(self.latency_s / max(1, len(words)))
            yield TextDelta(word if index == 0 else " " + word)
        yield StreamEnd(
            usage=Usage(_count(_text_of(request.messages)), _count(text)),
            model=request.model or self.model,
            finish_reason="stop",
        )


def create(name: str, config: ProviderSettings, settings: Settings) -> DeterministicProvider:
    del settings
    latency = float(config.options.get("latency_s", 0.0))
    return DeterministicProvider(name, model=config.model or "echo", latency_s=latency)
