"""J2/J3 at scale: read one job and list an application's jobs with 10k, 100k and 1M rows.

Rows are generated inside PostgreSQL (generate_series) in a fresh database; the timings
are of the exact store calls the API makes (``SQLJobStore.get_job`` / ``list_jobs``),
median of repeated calls, plus the PostgreSQL plan of the list query.

    python -m bench.job_list_scale --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

from sqlalchemy import text

from bench.procs import ROOT, fresh_database
from copydesk.migrations import upgrade_to_head
from copydesk.stores.sql import SQLJobStore, SQLStore

ORG = "00000000-0000-4000-8000-000000000001"
APP = "app-7"


async def grow(store: SQLStore, total: int, have: int) -> None:
    """Add rows until ``total``: 10 % belong to APP, statuses spread evenly."""
    async with store.engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO jobs (id, org_id, agent_id, agent_version, provider, inputs, status,
                  priority, fair_rank, attempts, max_attempts, available_at, created_at,
                  updated_at, prompt_tokens, completion_tokens, result_suggestion)
                SELECT gen_random_uuid()::text, :org, 'app-' || (g % 10), 1, 'local', '[]',
                  (ARRAY['completed','completed','completed','failed','queued'])[1 + g % 5],
                  0, g, 1, 5, now(), now() - make_interval(secs => :total - g), now(), 10, 50,
                  repeat('x', 400)
                FROM generate_series(:have + 1, :total) AS g
                """
            ),
            {"org": ORG, "total": total, "have": have},
        )
    # What autovacuum does in steady state: statistics, and a visibility map that lets
    # the count use an index-only scan.
    async with store.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(text("VACUUM ANALYZE jobs"))


async def timed(call: Any, repeat: int = 30) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
    }


async def run(sizes: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with fresh_database() as url:
        store = SQLStore(url)
        await store.open()
        try:
            await upgrade_to_head(store.engine)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO organizations VALUES (:id, 'bench', now())"), {"id": ORG}
                )
            jobs = SQLJobStore(store)
            have = 0
            for size in sizes:
                await grow(store, size, have)
                have = size
                async with store.engine.connect() as conn:
                    some = (
                        await conn.execute(text("SELECT id FROM jobs ORDER BY random() LIMIT 1"))
                    ).scalar_one()
                    plan = (
                        await conn.execute(
                            text(
                                "EXPLAIN SELECT * FROM jobs WHERE org_id = :o AND agent_id = :a "
                                "AND status IN ('completed') ORDER BY seq DESC LIMIT 50 OFFSET 0"
                            ),
                            {"o": ORG, "a": APP},
                        )
                    ).all()
                in_app = size // 10
                row = {
                    "rows": size,
                    "app_rows": in_app,
                    "get_job": await timed(lambda some=some: jobs.get_job(ORG, some)),
                    "get_unknown": await timed(lambda: jobs.get_job(ORG, str(uuid.uuid4()))),
                    "list_offset_0": await timed(lambda: jobs.list_jobs(ORG, APP, None, 0, 50)),
                    "list_completed_offset_0": await timed(
                        lambda: jobs.list_jobs(ORG, APP, ("completed",), 0, 50)
                    ),
                    "list_offset_half": await timed(
                        lambda n=in_app: jobs.list_jobs(ORG, APP, None, n // 2, 50), repeat=5
                    ),
                    "list_offset_end": await timed(
                        lambda n=in_app: jobs.list_jobs(ORG, APP, None, n - 50, 50), repeat=5
                    ),
                    "plan": [r[0] for r in plan][:4],
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "plan"}))
                print("  plan:", " / ".join(row["plan"][:3]))
        finally:
            await store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    rows = asyncio.run(run([int(s) for s in args.sizes.split(",")]))
    out = ROOT / "bench" / "results" / "job_list_scale.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
