"""API throughput and latency: ``POST /v1/applications/{id}/jobs`` (a job accepted
durably) and ``GET /v1/applications/jobs/{id}``, against ``copydesk serve --no-workers``
(jobs are stored but not run, so the load is the API alone) on SQLite and on PostgreSQL,
beside a bare Starlette app returning a fixed JSON on the same server stack (uvicorn,
httptools, uvloop, one process): the ratio's denominator.

The load generator is wrk (``bench/loadgen.py``), a separate process on the same machine,
``--connections`` keep-alive connections for ``--duration`` seconds after a ``--warmup``.
Servers run one at a time.

    python -m bench.api                                   # 32 connections, 10 s
    python -m bench.api --duration 3 --warmup 1 --deployments embedded
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import bare_app
from bench.loadgen import print_table, wrk, wrk_version
from bench.procs import ROOT, Proc, copydesk, cpu_s, fresh_database, rss_mb, spawn

AGENT_FILE = Path(__file__).with_name("text-agent.yaml")
AGENT = "2b8d4f6a-1c3e-4a5b-8d7f-9e0a1b2c3d4e"
BODY = json.dumps({"inputs": [{"id": "text", "value": ["Orbit trail shoe"]}]})
POST_PATH = f"/v1/applications/{AGENT}/jobs"


def copydesk_env(data: Path) -> dict[str, str]:
    return {
        "COPYDESK_DATA_DIR": str(data),
        "COPYDESK_CACHE_DIR": str(data / "cache"),
        "COPYDESK_PROVIDERS__LOCAL__KIND": "deterministic",
        "COPYDESK_LOG_LEVEL": "warning",
    }


@contextmanager
def server(name: str) -> Iterator[tuple[Proc, str, str]]:
    """A running server: (process, base URL, Authorization header value)."""
    with ExitStack() as stack:
        if name == "bare":
            proc = spawn([sys.executable, "-m", "bench.bare_app"], {})
            stack.callback(proc.stop)
            yield proc, proc.wait_for(bare_app.LISTENING + " "), ""
            return
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
        env = copydesk_env(data)
        if name == "copydesk-postgres":
            env["COPYDESK_DATABASE_URL"] = stack.enter_context(fresh_database())
        proc = copydesk(
            "serve", "--port", "0", "--no-workers", "--agents", str(AGENT_FILE), env=env
        )
        stack.callback(proc.stop)
        url = proc.wait_for("COPYDESK_LISTENING ")
        key = proc.line_after("API key for organisation")
        yield proc, url, f"Bearer {key}"
        for line in proc.errors():
            print(f"  {name} said: {line.rstrip()[:300]}")


def job_ids(url: str, auth: str, want: int) -> list[str]:
    """Ids of stored jobs, read back through the list route."""
    ids: list[str] = []
    with httpx.Client(base_url=url, headers={"authorization": auth}, timeout=60) as client:
        while len(ids) < want:
            r = client.get(POST_PATH, params={"offset": len(ids), "limit": 500})
            r.raise_for_status()
            page = [j["id"] for j in r.json()["result"]]
            if not page:
                break
            ids += page
    return ids[:want]


def measure(
    proc: Proc, url: str, route: str, paths: list[str], args: argparse.Namespace, **kw: Any
) -> dict[str, Any]:
    common = {"connections": args.connections, "threads": args.threads, **kw}
    if args.warmup > 0:
        wrk(url, paths, duration_s=args.warmup, **common)
    cpu0 = cpu_s(proc.popen.pid)
    result = wrk(url, paths, duration_s=args.duration, **common)
    cpu = cpu_s(proc.popen.pid) - cpu0
    return {
        "route": route,
        "connections": args.connections,
        **result,
        "server_cpu_pct": round(100 * cpu / result["seconds"], 0) if result["seconds"] else None,
        "server_rss_mib": round(rss_mb(proc.popen.pid), 1),
    }


def run_server(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    print(f"==> {name}", flush=True)
    with server(name) as (proc, url, auth):
        rows.append(
            measure(proc, url, "POST jobs", [POST_PATH], args, method="POST", body=BODY, auth=auth)
        )
        if name == "bare":
            ids = [str(uuid.uuid4()) for _ in range(args.ids)]
        else:
            ids = job_ids(url, auth, args.ids)
        paths = [f"/v1/applications/jobs/{i}" for i in ids]
        rows.append(measure(proc, url, "GET job", paths, args, auth=auth))
        rows[-1]["ids_cycled"] = len(ids)
        for row in rows:
            row["server"] = name
    for row in rows:
        print(
            f"    {row['route']}: {row['rps']:.0f} req/s, p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms, errors {row['errors'] or 0}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the same load first")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--deployments", default="embedded,postgres", help="copydesk on SQLite and/or PostgreSQL"
    )
    parser.add_argument("--ids", type=int, default=2000, help="distinct job ids the GETs cycle")
    args = parser.parse_args()
    version = wrk_version()
    names = ["bare"] + [
        {"embedded": "copydesk-sqlite", "postgres": "copydesk-postgres"}[d]
        for d in args.deployments.split(",")
        if d
    ]
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += run_server(name, args)
    bare = {r["route"]: r["rps"] for r in rows if r["server"] == "bare"}
    for row in rows:
        row["vs_bare"] = (
            round(row["rps"] / bare[row["route"]], 3) if bare.get(row["route"]) else None
        )
    print()
    print(
        f"API: {args.connections} connections, {args.duration:g} s each after {args.warmup:g} s "
        f"warm-up; load from {version} ({args.threads} thread) on the same machine"
    )
    print_table(
        rows,
        [
            ("server", "server", "s"),
            ("route", "route", "s"),
            ("connections", "conns", "d"),
            ("rps", "req/s", ".0f"),
            ("p50_ms", "p50 ms", ".2f"),
            ("p99_ms", "p99 ms", ".2f"),
            ("vs_bare", "vs bare", ".3f"),
            ("server_cpu_pct", "server CPU %", ".0f"),
        ],
    )
    for row in rows:
        if row["errors"]:
            print(f"  {row['server']} {row['route']}: errors {row['errors']}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"api-{stamp}.json"
    meta = {
        "at": stamp,
        "load_generator": version,
        "wrk_threads": args.threads,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    out.write_text(json.dumps({"benchmark": "api", "meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
