"""``GET /v1/applications/jobs/{id}`` and the job list over HTTP with 10k, 100k and 1M jobs
stored: ``copydesk serve --no-workers`` on a fresh PostgreSQL database, the rows added in
bulk inside PostgreSQL (``INSERT ... SELECT generate_series``, as ``bench.job_list_scale``
does; 10 % of them belong to the measured application, statuses spread
completed/failed/queued), then ``VACUUM ANALYZE``. Each size is measured with wrk
(``bench/loadgen.py``): GET cycles through ``--ids`` random stored ids; the list is read
at offset 0, offset 0 with ``status=completed``, half-way and at the last page.

    python -m bench.api_scale --sizes 10000,100000,1000000
    python -m bench.api_scale --sizes 10000 --duration 3 --warmup 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg

from bench.api import AGENT, AGENT_FILE, POST_PATH, copydesk_env
from bench.loadgen import print_table, wrk, wrk_version
from bench.procs import ROOT, Proc, copydesk, cpu_s, fresh_database

INPUTS = json.dumps([{"id": "text", "value": ["Orbit trail shoe"]}])


async def grow(dsn: str, org: str, have: int, total: int) -> float:
    """Rows ``have + 1 .. total``; row g is the measured application's when g % 10 == 0."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO jobs (id, org_id, agent_id, agent_version, provider, inputs, status,
              priority, fair_rank, attempts, max_attempts, available_at, created_at,
              updated_at, completed_at, result_title, result_suggestion, prompt_tokens,
              completion_tokens)
            SELECT gen_random_uuid()::text, $1,
              CASE WHEN g % 10 = 0 THEN $2 ELSE 'other-' || (g % 10) END, 1, 'local',
              $3::json,
              (ARRAY['completed','completed','completed','failed','queued'])[1 + g % 5],
              0, g, 1, 5, now(), now() - make_interval(secs => $5 - g), now(),
              CASE WHEN g % 5 < 3 THEN now() END, 'Rewrite', repeat('x', 400), 10, 50
            FROM generate_series($4 + 1, $5) AS g
            """,
            org,
            AGENT,
            INPUTS,
            have,
            total,
        )
        await conn.execute("VACUUM ANALYZE jobs")  # what autovacuum does in steady state
    finally:
        await conn.close()
    return time.perf_counter() - started


async def sample_ids(dsn: str, count: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id FROM jobs ORDER BY random() LIMIT $1", count)
    finally:
        await conn.close()
    return [r["id"] for r in rows]


async def org_id(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT id FROM organizations WHERE name = 'default'"))
    finally:
        await conn.close()


def measure(
    proc: Proc, url: str, auth: str, paths: list[str], connections: int, args: argparse.Namespace
) -> dict[str, Any]:
    common = {"auth": auth, "connections": connections, "threads": args.threads}
    if args.warmup > 0:
        wrk(url, paths, duration_s=args.warmup, **common)
    cpu0 = cpu_s(proc.popen.pid)
    result = wrk(url, paths, duration_s=args.duration, **common)
    cpu = cpu_s(proc.popen.pid) - cpu0
    return {
        "connections": connections,
        **result,
        "server_cpu_pct": round(100 * cpu / result["seconds"]) if result["seconds"] else None,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-scale-")))
        env = copydesk_env(data)
        env["COPYDESK_DATABASE_URL"] = url = stack.enter_context(fresh_database())
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        proc = copydesk(
            "serve", "--port", "0", "--no-workers", "--agents", str(AGENT_FILE), env=env
        )
        stack.callback(proc.stop)
        base = proc.wait_for("COPYDESK_LISTENING ")
        auth = f"Bearer {proc.line_after('API key for organisation')}"
        org = asyncio.run(org_id(dsn))
        have = 0
        for size in sizes:
            print(f"==> {size} jobs stored: inserting {size - have} rows", flush=True)
            insert_s = asyncio.run(grow(dsn, org, have, size))
            have = size
            in_app = size // 10
            ids = asyncio.run(sample_ids(dsn, args.ids))
            loads: list[tuple[str, list[str], int]] = [
                ("GET job", [f"/v1/applications/jobs/{i}" for i in ids], args.connections),
                ("list offset 0", [f"{POST_PATH}?offset=0&limit=50"], args.list_connections),
                (
                    "list completed offset 0",
                    [f"{POST_PATH}?status=completed&offset=0&limit=50"],
                    args.list_connections,
                ),
                (
                    f"list offset {in_app // 2}",
                    [f"{POST_PATH}?offset={in_app // 2}&limit=50"],
                    args.list_connections,
                ),
                (
                    f"list offset {max(0, in_app - 50)}",
                    [f"{POST_PATH}?offset={max(0, in_app - 50)}&limit=50"],
                    args.list_connections,
                ),
            ]
            for name, paths, connections in loads:
                row = {
                    "jobs_stored": size,
                    "app_jobs": in_app,
                    "load": name,
                    "insert_s": round(insert_s, 1),
                    **measure(proc, base, auth, paths, connections, args),
                }
                rows.append(row)
                print(
                    f"    {name}: {row['rps']:.0f} req/s, p50 {row['p50_ms']} ms, "
                    f"p99 {row['p99_ms']} ms, errors {row['errors'] or 0}",
                    flush=True,
                )
        for line in proc.errors():
            print(f"  copydesk said: {line.rstrip()[:300]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the same load first")
    parser.add_argument("--connections", type=int, default=32, help="for GET job")
    parser.add_argument("--list-connections", type=int, default=8, help="for the list loads")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--ids", type=int, default=10000, help="random stored ids GET cycles")
    args = parser.parse_args()
    version = wrk_version()
    rows = run(args)
    print()
    print(
        f"API at scale (PostgreSQL, copydesk serve --no-workers): {args.duration:g} s per load "
        f"after {args.warmup:g} s warm-up; load from {version}"
    )
    print_table(
        rows,
        [
            ("jobs_stored", "jobs stored", "d"),
            ("load", "load", "s"),
            ("connections", "conns", "d"),
            ("rps", "req/s", ".0f"),
            ("p50_ms", "p50 ms", ".2f"),
            ("p99_ms", "p99 ms", ".2f"),
            ("server_cpu_pct", "server CPU %", ".0f"),
        ],
    )
    for row in rows:
        if row["errors"]:
            print(f"  {row['jobs_stored']} {row['load']}: errors {row['errors']}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"api-scale-{stamp}.json"
    meta = {
        "at": stamp,
        "load_generator": version,
        "wrk_threads": args.threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    out.write_text(
        json.dumps({"benchmark": "api-scale", "meta": meta, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
