"""Backend saturation: N jobs against the fake LLM server with 1 s latency at concurrency C.

Jobs are stored through the API first (as batches of 5,000 rows, or with ``--submit jobs``
one ``POST …/jobs`` each; workers off), then workers start and the clock
runs until the last job completes. Ideal wall time = N / C * latency. Both deployments:
embedded (SQLite, `copydesk serve`) and scale-out (PostgreSQL, `serve --no-workers` +
one `copydesk worker`, PgQueuer engine).

    python -m bench.saturation --jobs 2000 --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.procs import ROOT, copydesk, cpu_s, fake_llm, fresh_database, rss_mb

#: py-spy writes its profile on SIGINT (and passes it on; copydesk stops on either).
STOP = signal.SIGINT
AGENT = "6f1c2a9e-3b7d-4c52-9a0e-5d8f1b2c3a41"
INPUTS = [
    {"id": "product_names", "value": ["Orbit trail shoe"]},
    {"id": "tone", "value": ["Playful"]},
]


def submit_batches(base_url: str, key: str, count: int, rows_per_batch: int = 5000) -> float:
    """Store ``count`` jobs as batches (one request per ``rows_per_batch``): seconds."""
    started = time.perf_counter()
    with httpx.Client(
        base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=300
    ) as client:
        for first in range(0, count, rows_per_batch):
            rows = [{"inputs": INPUTS} for _ in range(min(rows_per_batch, count - first))]
            r = client.post(f"/v1/applications/{AGENT}/batches", json=rows)
            r.raise_for_status()
    return time.perf_counter() - started


async def submit(base_url: str, key: str, count: int, parallel: int = 64) -> float:
    """Store ``count`` jobs one ``POST …/jobs`` each, ``parallel`` at a time: seconds."""
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)

        async def one() -> None:
            while not queue.empty():
                queue.get_nowait()
                r = await client.post(f"/v1/applications/{AGENT}/jobs", json={"inputs": INPUTS})
                r.raise_for_status()

        await asyncio.gather(*(one() for _ in range(parallel)))
    return time.perf_counter() - started


def completed(base_url: str, key: str) -> int:
    r = httpx.get(
        f"{base_url}/v1/applications/{AGENT}/jobs",
        params={"status": "completed", "limit": 1},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    r.raise_for_status()
    return int(r.json()["totalCount"])


def _python_pid(pid: int) -> int:
    """The copydesk process itself (the child when py-spy wraps it)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else pid


def run_one(
    deployment: str,
    jobs: int,
    concurrency: int,
    latency: float,
    profile: str | None = None,
    via: str = "batches",
) -> dict[str, Any]:
    with ExitStack() as stack:
        llm, llm_url = fake_llm("--latency", str(latency))
        stack.callback(llm.stop)
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {
            "COPYDESK_DATA_DIR": str(data),
            "COPYDESK_PROVIDERS__LOCAL__KIND": "openai",
            "COPYDESK_PROVIDERS__LOCAL__BASE_URL": f"{llm_url}/v1",
            "COPYDESK_PROVIDERS__LOCAL__MODEL": "fake",
            "COPYDESK_PROVIDERS__LOCAL__MAX_CONCURRENCY": str(concurrency),
            "COPYDESK_LOG_LEVEL": "warning",
        }
        if deployment == "postgres":
            env["COPYDESK_DATABASE_URL"] = stack.enter_context(fresh_database())
        agents = str(ROOT / "examples" / "agents")
        api = copydesk("serve", "--port", "0", "--no-workers", "--agents", agents, env=env)
        stack.callback(api.stop)
        base_url = api.wait_for("COPYDESK_LISTENING ")
        key = api.line_after("API key for organisation")
        if via == "batches":
            submit_s = submit_batches(base_url, key, jobs)
        else:
            submit_s = asyncio.run(submit(base_url, key, jobs))
        worker = api
        if deployment == "embedded":
            api.stop()  # the embedded default runs its workers inside `serve`
            api = copydesk("serve", "--port", "0", "--agents", agents, env=env, profile=profile)
            stack.callback(api.stop, STOP)
            base_url = api.wait_for("COPYDESK_LISTENING ")
            started, started_at = time.perf_counter(), time.time()
            worker_pid = _python_pid(api.popen.pid)
        else:
            worker = copydesk("worker", env=env, profile=profile)
            stack.callback(worker.stop, STOP)
            worker.wait_for("COPYDESK_WORKER ")
            started, started_at = time.perf_counter(), time.time()
            worker_pid = _python_pid(worker.popen.pid)
        cpu0 = cpu_s(worker_pid)
        peak_rss = 0.0
        done = 0
        polls = 0
        while done < jobs:
            # Every 50 ms, so the end is measured to better than 1 % of a 10 s run.
            time.sleep(0.05)
            polls += 1
            if polls % 5 == 0:
                peak_rss = max(peak_rss, rss_mb(worker_pid))
            done = completed(base_url, key)
        wall = time.perf_counter() - started
        cpu = cpu_s(worker_pid) - cpu0
        stats = httpx.get(f"{llm_url}/_stats").json()
        for line in api.errors() + (worker.errors() if deployment == "postgres" else []):
            print("  worker said:", line.rstrip()[:300])
    return _row(deployment, jobs, concurrency, latency, stats, wall, started_at, cpu, peak_rss) | {
        "submitted_via": via,
        "submit_s": round(submit_s, 2),
    }


#: The bound row (``bench/saturation_client.py``): the provider's calls alone.
BOUND = "provider-only"


def run_bound(jobs: int, concurrency: int, latency: float) -> dict[str, Any]:
    """The same calls against the same fake server, straight from the provider adapter."""
    with ExitStack() as stack:
        llm, llm_url = fake_llm("--latency", str(latency))
        stack.callback(llm.stop)
        args = [sys.executable, "-m", "bench.saturation_client", f"{llm_url}/v1"]
        done = subprocess.run(
            [*args, str(jobs), str(concurrency)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=jobs / concurrency * latency * 5 + 60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{BOUND} failed: {done.stderr[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        stats = httpx.get(f"{llm_url}/_stats").json()
    row = _row(
        BOUND,
        jobs,
        concurrency,
        latency,
        stats,
        measured["wall_s"],
        measured["started_at"],
        measured["cpu_s"],
        measured["peak_rss_mb"],
    )
    return row | {"submitted_via": "-", "submit_s": 0.0}


def _row(
    deployment: str,
    jobs: int,
    concurrency: int,
    latency: float,
    stats: dict[str, Any],
    wall: float,
    started_at: float,
    cpu: float,
    peak_rss: float,
) -> dict[str, Any]:
    arrivals = sorted(stats.get("arrivals") or [])
    per_second: dict[int, int] = {}
    for at in arrivals:
        second = int(at - arrivals[0])
        per_second[second] = per_second.get(second, 0) + 1
    ideal = jobs / concurrency * latency
    return {
        "deployment": deployment,
        "jobs": jobs,
        "concurrency": concurrency,
        "latency_s": latency,
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "wall_over_ideal": round(wall / ideal, 3),
        # When the first and the last provider call arrived, from the workers' start.
        "first_call_s": round(arrivals[0] - started_at, 2) if arrivals else None,
        "last_call_s": round(arrivals[-1] - started_at, 2) if arrivals else None,
        "server_peak_in_flight": stats["peak_in_flight"],
        "worker_cpu_s": round(cpu, 2),
        "worker_peak_rss_mb": round(peak_rss, 1),
        # How late each wave's last call left, against the first call plus k x latency
        # (ms): wave k is the calls k*C .. k*C+C-1 in arrival order.
        "wave_lag_ms": [
            round(
                (
                    arrivals[min(k * concurrency + concurrency, len(arrivals)) - 1]
                    - arrivals[0]
                    - k * latency
                )
                * 1000
            )
            for k in range(-(-len(arrivals) // concurrency))
        ],
        "arrivals_per_second": [
            per_second.get(i, 0) for i in range(max(per_second, default=-1) + 1)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        "--deployments",
        default=f"embedded,postgres,{BOUND}",
        help=f"comma-separated: embedded, postgres, {BOUND} (the provider's calls alone, a bound)",
    )
    parser.add_argument(
        "--profile",
        help="py-spy the worker (raw stacks, native frames) into "
        "bench/results/<name>-<deployment>.txt and print its hot spots",
    )
    parser.add_argument(
        "--submit",
        choices=["batches", "jobs"],
        default="batches",
        help="store the jobs as batches of 5,000 rows (default) or one POST …/jobs each",
    )
    args = parser.parse_args()
    rows = [
        run_bound(args.jobs, args.concurrency, args.latency)
        if d == BOUND
        else run_one(
            d,
            args.jobs,
            args.concurrency,
            args.latency,
            str(ROOT / "bench" / "results" / f"{args.profile}-{d}.txt") if args.profile else None,
            args.submit,
        )
        for d in args.deployments.split(",")
    ]
    columns = [c for c in rows[0] if c not in ("arrivals_per_second", "wave_lag_ms")]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
        print(
            f"  {row['deployment']}: provider calls started per second: "
            f"{row['arrivals_per_second']}"
        )
        print(
            f"  {row['deployment']}: each wave's last call, ms after first call + k x latency: "
            f"{row['wave_lag_ms']}"
        )
    if args.profile:
        from bench.engines.hotspots import summarise

        for d in args.deployments.split(","):
            path = ROOT / "bench" / "results" / f"{args.profile}-{d}.txt"
            if path.exists():
                print(f"\n{d}: hot spots ({path.relative_to(ROOT)})")
                print(summarise(path))
    out = ROOT / "bench" / "results" / f"saturation-{args.jobs}x{args.concurrency}.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
