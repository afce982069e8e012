"""The saturation benchmark's bound: Copydesk's provider calls and nothing else.

N calls of the ``openai`` provider (``OpenAICompatProvider``, the adapter every Copydesk
job on an OpenAI-compatible server goes through, with its pooled aiohttp session of C
connections) from C coroutines that each start the next call the moment theirs returns,
in one process: no database, no queue, no job records, no API. Each call sends the
request the saturation jobs send (the ``product-description`` agent, its prompt rendered
once). The distance of this row from 1.0 is what the machine, the fake server and the
HTTP client cost on their own; a deployment's distance beyond it is Copydesk's.

    python -m bench.saturation_client URL JOBS CONCURRENCY   # prints BOUND_READY, then JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import psutil
import uvloop

from bench.engines.common import agent_from
from bench.saturation import INPUTS
from copydesk.config import ProviderSettings, Settings
from copydesk.generation import build_request
from copydesk.providers import openai_compat

AGENT_FILE = Path(__file__).resolve().parents[1] / "examples/agents/product-description.yaml"


async def run(url: str, jobs: int, concurrency: int) -> dict[str, float]:
    config = ProviderSettings(
        kind="openai", base_url=url, model="fake", max_concurrency=concurrency
    )
    provider = openai_compat.create("local", config, Settings())
    await provider.open()
    agent = agent_from(AGENT_FILE)
    values = {str(item["id"]): list(item["value"]) for item in INPUTS}
    request = build_request(agent, values, "fake")
    left = jobs

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await provider.generate(request)

    me = psutil.Process()
    print("BOUND_READY", flush=True)
    started_at, started, cpu = time.time(), time.perf_counter(), me.cpu_times()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    after = me.cpu_times()
    await provider.close()
    return {
        "started_at": started_at,
        "wall_s": wall,
        "cpu_s": after.user + after.system - cpu.user - cpu.system,
        "peak_rss_mb": me.memory_info().rss / 2**20,
    }


def main() -> None:
    url, jobs, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(uvloop.run(run(url, jobs, concurrency))), flush=True)


if __name__ == "__main__":
    main()
