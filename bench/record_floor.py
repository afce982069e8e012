"""The floor of Copydesk's record keeping: jobs/s when a worker does nothing but the
store calls every job needs (claim it running under a lease, write its outcome and its
attempt record), in batches of ``--batch``, with no HTTP, no prompt, no provider and no
engine around them. Whatever the rest of Copydesk does, one worker cannot go faster than
this on the same database, so it bounds the engine-overhead figure from above.

    python -m bench.record_floor --jobs 20000 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.procs import ROOT, fresh_database
from copydesk.migrations import upgrade_to_head
from copydesk.store import NewJob, Outcome
from copydesk.stores.sql import SQLJobStore, SQLStore, utcnow


async def floor(url: str, count: int, batch: int) -> dict[str, Any]:
    store = SQLStore(url)
    await store.open()
    await upgrade_to_head(store.engine)
    jobs = SQLJobStore(store)
    org = await store.create_organization("bench")
    news = [
        NewJob(
            id=str(uuid.uuid4()),
            org_id=org.id,
            agent_id="agent",
            agent_version=1,
            provider="echo",
            inputs=[{"id": "text", "value": ["x"]}],
            max_attempts=5,
        )
        for _ in range(count)
    ]
    for start in range(0, count, 1000):
        await jobs.create_jobs(news[start : start + 1000])
    started = time.perf_counter()
    done = 0
    while done < count:
        claimed = await jobs.claim_jobs("echo", batch, "floor", 30.0)
        if not claimed:
            break
        now = utcnow()
        outcomes = [
            Outcome(
                job_id=j.id,
                kind="completed",
                owner="floor",
                attempt=j.attempts,
                started_at=now,
                ended_at=now,
                title="t",
                suggestion="s",
                prompt_tokens=1,
                completion_tokens=1,
            )
            for j in claimed
        ]
        await jobs.finish_attempts(outcomes)
        done += len(claimed)
    wall = time.perf_counter() - started
    await store.close()
    return {"jobs": done, "seconds": round(wall, 3), "jobs_per_s": round(done / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--deployments", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    for name in args.deployments.split(","):
        with ExitStack() as stack:
            if name == "postgres":
                url = stack.enter_context(fresh_database())
            else:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                url = f"sqlite+aiosqlite:///{tmp / 'floor.db'}"
            result = asyncio.run(floor(url, args.jobs, args.batch))
        rows.append({"database": name, "batch": args.batch, **result})
    print("database | jobs | batch | seconds | jobs/s (claim + outcome + attempt only)")
    for r in rows:
        print(f"{r['database']} | {r['jobs']} | {r['batch']} | {r['seconds']} | {r['jobs_per_s']}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"record-floor-{stamp}.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
