"""What PgQueuer's dequeue costs with and without a per-entrypoint ``concurrency_limit``.

Why the PgQueuer engine bounds picks with the per-worker budget (``max_concurrent_tasks``)
and not with ``concurrency_limit`` (bench/README.md, "Saturation"). On a fresh database:
enqueue ``--jobs`` entries, then in a loop dequeue a batch of ``--batch`` and, once
``--held`` are picked, log a batch as done (PgQueuer deletes it), as a saturated worker
does. Mean milliseconds per dequeue, per phase of the loop, for three gates:

- ``concurrency_limit``: the entrypoints carry a limit (and the worker a budget);
- ``budget``: only the per-worker budget (what the engine uses);
- ``none``: no gate at all.

    python -m bench.pgqueuer_dequeue
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Queries
from pgqueuer.ports.repository import EntrypointExecutionParameter

from bench.loadgen import print_table
from bench.procs import ROOT, fresh_database


async def measure(gate: str, jobs: int, batch: int, held: int, rounds: int) -> dict[str, Any]:
    with fresh_database() as url:
        conn = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
        try:
            queries = Queries(AsyncpgDriver(conn))
            await queries.install()
            # Distinct priorities, as Copydesk's (priority and fair rank folded into one).
            await queries.enqueue(
                ["copydesk.local"] * jobs, [b"x"] * jobs, [-1_000_000 - i for i in range(jobs)]
            )
            limit = 2 * held if gate == "concurrency_limit" else 0
            entrypoints = {
                ep: EntrypointExecutionParameter(concurrency_limit=limit)
                for ep in ("copydesk.local", "copydesk.echo")
            }
            budget = None if gate == "none" else 4 * held
            manager = uuid.uuid4()
            picked: list[Any] = []
            times: list[float] = []
            for _ in range(rounds):
                started = time.perf_counter()
                got = await queries.dequeue(
                    batch_size=batch,
                    entrypoints=entrypoints,
                    queue_manager_id=manager,
                    global_concurrency_limit=budget,
                    heartbeat_timeout=timedelta(seconds=30),
                )
                times.append((time.perf_counter() - started) * 1000)
                picked.extend(got)
                if len(picked) > held:
                    done, picked = picked[:batch], picked[batch:]
                    await queries.log_jobs([(j, "successful", None) for j in done])
        finally:
            await conn.close()
    fill = max(1, held // batch)
    return {
        "gate": gate,
        "ms_while_filling": round(sum(times[:fill]) / fill, 1),
        "ms_churning": round(sum(times[fill:]) / max(1, len(times) - fill), 1),
        "ms_max": round(max(times), 1),
        "dequeues": len(times),
    }


async def main_async(args: argparse.Namespace) -> None:
    rows = [
        await measure(gate, args.jobs, args.batch, args.held, args.rounds)
        for gate in ("concurrency_limit", "budget", "none")
    ]
    print(
        f"PgQueuer dequeue: {args.jobs} entries, batches of {args.batch}, ~{args.held} "
        f"picked (one batch logged done per dequeue once they are), {args.rounds} dequeues"
    )
    print_table(
        rows,
        [
            ("gate", "gate", ""),
            ("ms_while_filling", "ms per dequeue, filling", ".1f"),
            ("ms_churning", "ms per dequeue, churning", ".1f"),
            ("ms_max", "max ms", ".1f"),
        ],
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"pgqueuer-dequeue-{stamp}.json"
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=150)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
