"""vLLM on a GPU: output tokens/s of the same prompts sent straight to vLLM with its own
benchmark client, and submitted as Copydesk jobs through the ``openai`` provider.

Runs only where there is a GPU and vLLM is installed (``pip install vllm``) and model
weights are on disk (nothing is downloaded: ``--model`` is a local directory). Anywhere
else it prints why it was skipped and records that in ``bench/results/vllm-*.json``.

The prompts are the product-description agent's, rendered for the rows of
``shared/data/products.csv`` (cycled up to ``--prompts``), so both paths send the same
chat requests with the same ``max_tokens``:

    python -m bench.vllm --model /models/Qwen2.5-0.5B-Instruct --prompts 2000 --concurrency 256

1. ``vllm serve MODEL --port P`` is started (or ``--vllm-url`` names a running one).
2. Direct: ``vllm bench serve --backend openai-chat --dataset-name custom`` over the
   rendered prompts at ``--concurrency``; its ``output_throughput`` is the baseline.
3. Copydesk: ``copydesk serve`` (SQLite, in-process workers) with a provider
   ``COPYDESK_PROVIDERS__VLLM__KIND=openai`` pointed at vLLM, ``MAX_CONCURRENCY`` =
   ``--concurrency``; every prompt is submitted as a job (J1), and the clock runs from
   the first submit to the last completion. Output tokens are the jobs' completion tokens.
4. Ratio = Copydesk's output tokens/s over vLLM's own.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.procs import ROOT, copydesk, spawn

RESULTS = ROOT / "bench" / "results"
PRODUCTS = ROOT.parent / "shared" / "data" / "products.csv"
AGENT_ID = "6f1c2a9e-3b7d-4c52-9a0e-5d8f1b2c3a41"  # examples/agents/product-description.yaml


def why_not_here(model: str | None, vllm_url: str | None) -> str | None:
    if vllm_url is None and shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed here (pip install vllm)"
    if vllm_url is None and (model is None or not Path(model).is_dir()):
        return "--model must name a local model directory (nothing is downloaded)"
    return None


def rows(count: int) -> list[dict[str, str]]:
    with PRODUCTS.open(newline="", encoding="utf-8") as f:
        products = list(csv.DictReader(f))
    return [products[i % len(products)] for i in range(count)]


def product_inputs(row: dict[str, str]) -> list[dict[str, Any]]:
    name = f"{row['product_name']} ({row['key_features']})"
    return [
        {"id": "product_names", "value": [name]},
        {"id": "tone", "value": [row["tone"]]},
    ]


def render_prompts(products: list[dict[str, str]]) -> list[str]:
    """The agent's prompt for each row, rendered by Copydesk's own renderer."""
    from copydesk.agents import load_agent_file
    from copydesk.prompts import render_prompt

    spec = load_agent_file(ROOT / "examples" / "agents" / "product-description.yaml")
    out = []
    for row in products:
        values = {i["id"]: i["value"] for i in product_inputs(row)}
        out.append(render_prompt(spec, values))
    return out


def direct(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "prompts.jsonl"
        dataset.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        result = Path(tmp) / "result.json"
        subprocess.run(
            [
                "vllm", "bench", "serve", "--backend", "openai-chat",
                "--base-url", url, "--endpoint", "/v1/chat/completions", "--model", model,
                "--dataset-name", "custom", "--dataset-path", str(dataset),
                "--custom-output-len", str(max_tokens), "--num-prompts", str(len(prompts)),
                "--max-concurrency", str(concurrency), "--save-result",
                "--result-dir", tmp, "--result-filename", result.name,
            ],
            check=True,
        )  # fmt: skip
        return float(json.loads(result.read_text())["output_throughput"])


async def through_copydesk(base_url: str, key: str, products: list[dict[str, str]]) -> float:
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:
        started = time.perf_counter()
        gate = asyncio.Semaphore(64)

        async def submit(row: dict[str, str]) -> str:
            async with gate:
                r = await client.post(
                    f"/v1/applications/{AGENT_ID}/jobs", json={"inputs": product_inputs(row)}
                )
                r.raise_for_status()
                return str(r.json()["id"])

        ids = await asyncio.gather(*(submit(r) for r in products))
        tokens = 0
        pending = set(ids)
        while pending:
            await asyncio.sleep(0.25)
            for job_id in list(pending):
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    pending.discard(job_id)
                    tokens += int((job.get("usage") or {}).get("completion_tokens") or 0)
        return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="local model directory for `vllm serve`")
    parser.add_argument("--vllm-url", help="a running vLLM server (http://HOST:PORT)")
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"vllm-{stamp}.json"
    reason = why_not_here(args.model, args.vllm_url)
    if reason:
        print(f"vllm benchmark skipped: {reason}")
        out.write_text(json.dumps({"benchmark": "vllm", "skipped": reason}, indent=2) + "\n")
        return
    products = rows(args.prompts)
    with ExitStack() as stack:
        url = args.vllm_url
        if url is None:
            server = spawn(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                 "--model", args.model, "--port", str(args.port)],
                {},
            )  # fmt: skip
            stack.callback(server.stop)
            url = f"http://127.0.0.1:{args.port}"
            server.wait_for("INFO", timeout=600)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(2)
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        vllm_tps = direct(url, model, render_prompts(products), args.concurrency, args.max_tokens)
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {
            "COPYDESK_DATA_DIR": str(data),
            "COPYDESK_DEFAULT_PROVIDER": "vllm",
            "COPYDESK_PROVIDERS__VLLM__KIND": "openai",
            "COPYDESK_PROVIDERS__VLLM__BASE_URL": f"{url}/v1",
            "COPYDESK_PROVIDERS__VLLM__MODEL": model,
            "COPYDESK_PROVIDERS__VLLM__MAX_CONCURRENCY": str(args.concurrency),
            "COPYDESK_LOG_LEVEL": "warning",
        }
        agents = data / "agents"
        agents.mkdir()
        text = (ROOT / "examples" / "agents" / "product-description.yaml").read_text()
        text = text.replace("provider: local", "provider: vllm")
        text = text.replace("max_tokens:", f"max_tokens: {args.max_tokens} #", 1)
        (agents / "product-description.yaml").write_text(text)
        api = copydesk("serve", "--port", "0", "--agents", str(agents), env=env)
        stack.callback(api.stop)
        base_url = api.wait_for("COPYDESK_LISTENING ")
        key = api.line_after("API key for organisation")
        copydesk_tps = asyncio.run(through_copydesk(base_url, key, products))
    ratio = copydesk_tps / vllm_tps if vllm_tps else 0.0
    print(f"{'path':<24} | output tok/s | ratio")
    print(f"{'vllm bench serve':<24} | {vllm_tps:12.1f} | 1.000")
    print(f"{'copydesk jobs (openai)':<24} | {copydesk_tps:12.1f} | {ratio:.3f}")
    out.write_text(
        json.dumps(
            {
                "benchmark": "vllm",
                "prompts": args.prompts,
                "concurrency": args.concurrency,
                "max_tokens": args.max_tokens,
                "model": model,
                "vllm_output_tokens_per_s": round(vllm_tps, 1),
                "copydesk_output_tokens_per_s": round(copydesk_tps, 1),
                "ratio": round(ratio, 3),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
