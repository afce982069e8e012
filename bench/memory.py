"""Worker memory (issue 5, part 4).

(a) ``in-flight``: the worker's RSS idle, and with ``--in-flight`` (1,000) provider calls in
flight at once: the fake LLM server answers after ``--latency`` seconds (60), the provider
admits ``max_concurrency`` = that many calls; the reading is taken once the fake's
``/_stats`` shows them all in flight (and held for 2 s).

(b) ``soak``: RSS over many jobs with the deterministic provider (answers at once):
``--rounds`` rounds of ``--total / --rounds`` jobs; after each round is done (no job queued
or running) the worker's RSS is read. Round 1 is the warm-up: growth is measured from
there to the end.

Deployments: ``postgres`` (one ``copydesk worker``, PgQueuer engine) and ``embedded``
(``copydesk serve`` with its in-process workers, SQLite). Jobs are stored in bulk from
this process through ``JobStore.create_jobs`` (chunks of 1,000, with the engine's enqueue
hook), as ``bench.engine_overhead`` does.

    python -m bench.memory                                  # 1,000 in flight; 1M jobs
    python -m bench.memory --total 20000 --rounds 4 --latency 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.loadgen import print_table
from bench.procs import ROOT, Proc, copydesk, cpu_s, fake_llm, fresh_database, rss_mb
from copydesk.app import App
from copydesk.config import Settings
from copydesk.jobs import statuses_for
from copydesk.store import NewJob

AGENT_FILE = Path(__file__).with_name("text-agent.yaml")
AGENT = "2b8d4f6a-1c3e-4a5b-8d7f-9e0a1b2c3d4e"
INPUTS = [{"id": "text", "value": ["Orbit trail shoe"]}]
CHUNK = 1000


def hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Deployment:
    """The measured process (``worker`` or ``serve``) and a producer-side App on its database."""

    def __init__(self, kind: str, env: dict[str, str]) -> None:
        self.kind = kind
        self.env = env
        self.app: App | None = None
        self.org = ""
        self.proc: Proc | None = None

    async def open(self, stack: AsyncExitStack) -> None:
        data = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        stack.callback(shutil.rmtree, data, True)
        self.env.update(
            {
                "COPYDESK_DATA_DIR": str(data),
                "COPYDESK_CACHE_DIR": str(data / "cache"),
                "COPYDESK_LOG_LEVEL": "warning",
                "COPYDESK_SHUTDOWN_GRACE_S": "1",
            }
        )
        if self.kind == "postgres":
            self.env["COPYDESK_DATABASE_URL"] = stack.enter_context(fresh_database())
        saved = dict(os.environ)  # the settings the process reads, read here the same way
        os.environ.update(self.env)
        try:
            settings = Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.app = App(settings)
        await self.app.open()  # migrates before the measured process starts
        stack.push_async_callback(self.app.close)
        org = await self.app.accounts.ensure_organization(settings.bootstrap_org)
        await self.app.catalog.deploy_files(org.id, [AGENT_FILE])
        self.org = org.id
        if self.kind == "postgres":
            self.proc = copydesk("worker", env=self.env)
            stack.callback(self.proc.stop)
            await asyncio.to_thread(self.proc.wait_for, "COPYDESK_WORKER ", 120)
        else:
            self.proc = copydesk("serve", "--port", "0", env=self.env)
            stack.callback(self.proc.stop)
            await asyncio.to_thread(self.proc.wait_for, "COPYDESK_LISTENING ", 120)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.popen.pid

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.popen.poll() is not None:
            raise RuntimeError(f"{self.kind} process exited: {''.join(self.proc.read_lines())}")

    async def enqueue(self, count: int) -> None:
        assert self.app is not None
        app = self.app
        prepared = await app.generator.prepare(self.org, AGENT, INPUTS)
        inputs: list[dict[str, object]] = [
            {"id": k, "value": v} for k, v in prepared.values.items()
        ]
        for start in range(0, count, CHUNK):
            batch = [
                NewJob(
                    id=str(uuid.uuid4()),
                    org_id=self.org,
                    agent_id=prepared.agent.id,
                    agent_version=prepared.agent.version,
                    provider=prepared.provider,
                    inputs=inputs,
                    max_attempts=app.settings.max_attempts,
                )
                for _ in range(min(CHUNK, count - start))
            ]
            await app.jobs.create_jobs(batch, app.queue.enqueue_hook)
            app.queue.notify()

    async def count(self, wire: str) -> int:
        assert self.app is not None
        page = await self.app.jobs.list_jobs(self.org, AGENT, statuses_for(wire), 0, 1)  # type: ignore[arg-type]
        return page.total

    def errors(self) -> list[str]:
        return self.proc.errors() if self.proc is not None else []

    async def vacuum(self) -> None:
        """VACUUM the database between rounds: what autovacuum does when it is on."""
        url = self.env["COPYDESK_DATABASE_URL"]
        conn = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
        try:
            await conn.execute("VACUUM (ANALYZE)")
        finally:
            await conn.close()


async def idle_rss(dep: Deployment, settle_s: float = 3.0) -> float:
    await asyncio.sleep(settle_s)
    return rss_mb(dep.pid)


async def in_flight(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    target = args.in_flight
    async with AsyncExitStack() as stack:
        llm, llm_url = fake_llm("--latency", str(args.latency))
        stack.callback(llm.stop)
        dep = Deployment(
            kind,
            {
                "COPYDESK_PROVIDERS__LOCAL__KIND": "openai",
                "COPYDESK_PROVIDERS__LOCAL__BASE_URL": f"{llm_url}/v1",
                "COPYDESK_PROVIDERS__LOCAL__MODEL": "fake",
                "COPYDESK_PROVIDERS__LOCAL__MAX_CONCURRENCY": str(target),
            },
        )
        await dep.open(stack)
        idle = await idle_rss(dep)
        started = time.perf_counter()
        await dep.enqueue(target)
        seen = 0
        async with httpx.AsyncClient(base_url=llm_url, timeout=30) as client:
            deadline = started + args.latency * 0.8
            while time.perf_counter() < deadline:
                dep.alive()
                stats = (await client.get("/_stats", params={"arrivals": 0})).json()
                seen = stats["in_flight"]
                if seen >= target:
                    break
                await asyncio.sleep(0.25)
            reached_s = time.perf_counter() - started
            await asyncio.sleep(2.0)  # all admitted: let the worker settle
            rss = rss_mb(dep.pid)
            hwm = hwm_mb(dep.pid)
            stats = (await client.get("/_stats", params={"arrivals": 0})).json()
        for line in dep.errors():
            print(f"  {kind} said: {line.rstrip()[:300]}")
    in_flight_now = stats["in_flight"]
    return {
        "deployment": kind,
        "process": "copydesk worker" if kind == "postgres" else "copydesk serve",
        "target_in_flight": target,
        "in_flight_at_reading": in_flight_now,
        "peak_in_flight": stats["peak_in_flight"],
        "seconds_to_reach": round(reached_s, 1),
        "idle_rss_mib": round(idle, 1),
        "rss_in_flight_mib": round(rss, 1),
        "peak_rss_mib": round(hwm, 1),
        "growth_mib": round(rss - idle, 1),
        "kib_per_call": round((rss - idle) * 1024 / in_flight_now, 1) if in_flight_now else None,
    }


async def soak(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    per_round = args.total // args.rounds
    async with AsyncExitStack() as stack:
        dep = Deployment(
            kind,
            {
                "COPYDESK_PROVIDERS__LOCAL__KIND": "deterministic",
                "COPYDESK_PROVIDERS__LOCAL__MAX_CONCURRENCY": str(args.concurrency),
            },
        )
        await dep.open(stack)
        idle = await idle_rss(dep)
        cpu0 = cpu_s(dep.pid)
        rounds: list[dict[str, Any]] = []
        done = 0
        for n in range(1, args.rounds + 1):
            started = time.perf_counter()
            await dep.enqueue(per_round)
            while await dep.count("in_progress"):
                dep.alive()
                await asyncio.sleep(0.5)
            seconds = time.perf_counter() - started
            done += per_round
            completed = await dep.count("completed")
            if args.vacuum and kind == "postgres":
                await dep.vacuum()
            await asyncio.sleep(1.0)  # between rounds: what the worker holds when idle
            row = {
                "round": n,
                "jobs_done": done,
                "completed": completed,
                "seconds": round(seconds, 1),
                "jobs_per_s": round(per_round / seconds, 0),
                "rss_mib": round(rss_mb(dep.pid), 1),
                "peak_rss_mib": round(hwm_mb(dep.pid), 1),
            }
            rounds.append(row)
            print(
                f"    round {n}: {done} jobs done ({completed} completed), "
                f"{row['jobs_per_s']:.0f} jobs/s, RSS {row['rss_mib']} MiB",
                flush=True,
            )
        cpu = cpu_s(dep.pid) - cpu0
        for line in dep.errors():
            print(f"  {kind} said: {line.rstrip()[:300]}")
    warm, end = rounds[0]["rss_mib"], rounds[-1]["rss_mib"]
    after_warm = done - per_round
    return {
        "deployment": kind,
        "process": "copydesk worker" if kind == "postgres" else "copydesk serve",
        "jobs": done,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "idle_rss_mib": round(idle, 1),
        "rss_after_warmup_mib": warm,
        "rss_end_mib": end,
        "growth_mib": round(end - warm, 1),
        "growth_pct": round(100 * (end - warm) / warm, 1) if warm else None,
        "growth_kib_per_100k_jobs": round((end - warm) * 1024 * 100_000 / after_warm, 1)
        if after_warm
        else None,
        "peak_rss_mib": rounds[-1]["peak_rss_mib"],
        "worker_cpu_s": round(cpu, 1),
        "per_round": rounds,
    }


async def main_async(args: argparse.Namespace) -> None:
    kinds = [d for d in args.deployments.split(",") if d]
    parts = [p for p in args.parts.split(",") if p]
    result: dict[str, Any] = {"benchmark": "memory"}
    if "in-flight" in parts:
        rows = []
        for kind in kinds:
            print(f"==> in-flight, {kind}: {args.in_flight} calls, latency {args.latency:g} s")
            rows.append(await in_flight(kind, args))
        result["in_flight"] = rows
    if "soak" in parts:
        rows = []
        for kind in kinds:
            print(f"==> soak, {kind}: {args.total} jobs in {args.rounds} rounds")
            rows.append(await soak(kind, args))
        result["soak"] = rows
    print()
    if "in_flight" in result:
        print(
            f"(a) RSS with {args.in_flight} provider calls in flight (fake LLM, {args.latency:g} s)"
        )
        print_table(
            result["in_flight"],
            [
                ("deployment", "deployment", "s"),
                ("process", "process", "s"),
                ("in_flight_at_reading", "in flight", "d"),
                ("idle_rss_mib", "idle RSS MiB", ".1f"),
                ("rss_in_flight_mib", "RSS in flight MiB", ".1f"),
                ("growth_mib", "+MiB", ".1f"),
                ("kib_per_call", "KiB/call", ".1f"),
                ("peak_rss_mib", "peak MiB", ".1f"),
            ],
        )
        print()
    if "soak" in result:
        print(f"(b) RSS over {args.total} jobs (deterministic provider), {args.rounds} rounds")
        print_table(
            result["soak"],
            [
                ("deployment", "deployment", "s"),
                ("jobs", "jobs", "d"),
                ("idle_rss_mib", "idle RSS MiB", ".1f"),
                ("rss_after_warmup_mib", "after round 1 MiB", ".1f"),
                ("rss_end_mib", "end MiB", ".1f"),
                ("growth_mib", "growth MiB", ".1f"),
                ("growth_pct", "growth %", ".1f"),
                ("peak_rss_mib", "peak MiB", ".1f"),
            ],
        )
        for row in result["soak"]:
            print(
                f"  {row['deployment']} RSS per round: {[r['rss_mib'] for r in row['per_round']]}"
            )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result["meta"] = {
        "at": stamp,
        "args": vars(args),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    out = ROOT / "bench" / "results" / f"memory-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="in-flight,soak", help="in-flight and/or soak")
    parser.add_argument("--deployments", default="postgres,embedded")
    parser.add_argument("--in-flight", type=int, default=1000, help="(a) calls in flight")
    parser.add_argument("--latency", type=float, default=60.0, help="(a) fake LLM latency, s")
    parser.add_argument("--total", type=int, default=1_000_000, help="(b) jobs in all")
    parser.add_argument("--rounds", type=int, default=10, help="(b) RSS read after each")
    parser.add_argument("--concurrency", type=int, default=100, help="(b) provider concurrency")
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="(b) VACUUM the PostgreSQL database between rounds (what autovacuum does; "
        "it is off on some machines, and the tables then bloat round by round)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
