"""Engine overhead: end-to-end throughput of N no-op jobs, Copydesk beside its peers.

Each system runs in turn on this machine: its broker or database is reset, one worker
process starts, N jobs whose work returns at once are enqueued in bulk, and the clock
runs from the first enqueue to the moment its own result store shows all N completed.
Copydesk runs its real stack (``copydesk worker``, the deterministic ``echo`` provider)
on SQLite with the embedded engine and on PostgreSQL with the PgQueuer engine. The
peers are Celery (Redis broker), arq and SAQ (asyncio on Redis), procrastinate and
PgQueuer (PostgreSQL). Each row's ratio is its jobs/s over the fastest peer's.
Three rows are not peers but bounds, never ranked: ``pgqueuer+records`` for
``copydesk-postgres`` (plain PgQueuer plus the rows Copydesk keeps per job, written
straight through the driver: ``bench/engines/pgqueuer_records_runner.py``), and
``sqlite+records`` / ``sqlite+records+prompt`` for ``copydesk-embedded`` (Copydesk's SQLite
rows per job straight through ``sqlite3``, the second also rendering each job's prompt:
``bench/engines/sqlite_records_runner.py``).

    python -m bench.engine_overhead                 # N = 20000
    python -m bench.engine_overhead --quick         # N = 2000
    python -m bench.engine_overhead --systems copydesk-embedded,arq --jobs 5000
    python -m bench.engine_overhead --quick --profile --systems copydesk-embedded,copydesk-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.engines.common import ROOT, Measurement, Runner, measure

RESULTS = ROOT / "bench" / "results"
COPYDESK = ("copydesk-embedded", "copydesk-postgres")
#: Rows that bound a Copydesk row instead of competing with it: never the fastest peer.
BOUNDS = ("pgqueuer+records", "sqlite+records", "sqlite+records+prompt")


def _copydesk(database: str) -> Callable[[], Runner]:
    def make() -> Runner:
        from bench.engines.copydesk_runner import CopydeskRunner

        return CopydeskRunner(database)

    return make


def _peer(module: str, cls: str) -> Callable[[], Runner]:
    def make() -> Runner:
        mod = __import__(f"bench.engines.{module}", fromlist=[cls])
        return getattr(mod, cls)()  # type: ignore[no-any-return]

    return make


SYSTEMS: dict[str, Callable[[], Runner]] = {
    "copydesk-embedded": _copydesk("sqlite"),
    "copydesk-postgres": _copydesk("postgres"),
    "celery": _peer("celery_runner", "CeleryRunner"),
    "arq": _peer("arq_runner", "ArqRunner"),
    "saq": _peer("saq_runner", "SaqRunner"),
    "procrastinate": _peer("procrastinate_runner", "ProcrastinateRunner"),
    "pgqueuer": _peer("pgqueuer_runner", "PgQueuerRunner"),
    "pgqueuer+records": _peer("pgqueuer_records_runner", "PgQueuerRecordsRunner"),
    "sqlite+records": _peer("sqlite_records_runner", "SqliteRecordsRunner"),
    "sqlite+records+prompt": _peer("sqlite_records_runner", "PromptRenderRunner"),
}
VERSIONS = ["copydesk", "celery", "arq", "saq", "procrastinate", "pgqueuer", "redis", "asyncpg"]


async def run_one(name: str, jobs: int, concurrency: int, profile: Path | None) -> Measurement:
    try:
        runner = SYSTEMS[name]()
    except Exception as exc:  # e.g. the library is not installed
        return Measurement(name, jobs, ok=False, error=f"{type(exc).__name__}: {exc}")
    return await measure(runner, jobs, concurrency, profile=profile)


def ratios(rows: list[Measurement]) -> tuple[str | None, dict[str, float]]:
    peers = [r for r in rows if r.ok and r.system not in (*COPYDESK, *BOUNDS) and r.jobs_per_s]
    if not peers:
        return None, {}
    best = max(peers, key=lambda r: r.jobs_per_s or 0.0)
    assert best.jobs_per_s
    return best.system, {
        r.system: round((r.jobs_per_s or 0.0) / best.jobs_per_s, 3) for r in rows if r.ok
    }


def _ratio(ratio: dict[str, float], system: str) -> str:
    return f"{ratio[system]:.2f}" if system in ratio else "-"


def table(rows: list[Measurement], ratio: dict[str, float]) -> str:
    head = [
        "system",
        "jobs",
        "seconds",
        "jobs/s",
        "vs fastest peer",
        "worker CPU s",
        "worker peak RSS MB",
        "machine CPU us/job",
        "worker / producer / server us/job",
    ]
    lines = [head]
    for r in rows:
        if r.ok:
            lines.append(
                [
                    r.system,
                    str(r.jobs),
                    f"{r.seconds:.2f}",
                    f"{r.jobs_per_s:.0f}",
                    _ratio(ratio, r.system),
                    f"{r.worker_cpu_s:.1f}",
                    f"{r.worker_peak_rss_mb:.0f}",
                    f"{r.machine_cpu_us_per_job:.0f}",
                    f"{r.worker_cpu_us_per_job:.0f} / {r.producer_cpu_us_per_job:.0f} / "
                    f"{r.server_cpu_us_per_job:.0f}",
                ]
            )
        else:
            lines.append([r.system, str(r.jobs), "FAILED", "-", "-", "-", "-", "-", "-"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    for r in rows:
        if not r.ok:
            out.append(f"  {r.system} failed: {r.error}")
    return "\n".join(out)


def chart(rows: list[Measurement], ratio: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.ok]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(ok) + 1.5))
    names = [r.system for r in ok]
    values = [r.jobs_per_s or 0.0 for r in ok]
    colors = [
        "tab:orange" if r.system in COPYDESK else "tab:gray" if r.system in BOUNDS else "tab:blue"
        for r in ok
    ]
    bars = ax.barh(names, values, color=colors)
    for bar, r in zip(bars, ok, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {r.jobs_per_s:.0f}/s (x{_ratio(ratio, r.system)})",
            va="center",
            fontsize=8,
        )
    ax.invert_yaxis()
    ax.set_xlabel("jobs/s, first enqueue to last completion (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(values, default=1) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


async def main_async(args: argparse.Namespace) -> None:
    jobs = 2000 if args.quick and args.jobs is None else (args.jobs or 20000)
    names = args.systems.split(",") if args.systems else list(SYSTEMS)
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; known: {', '.join(SYSTEMS)}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[Measurement] = []
    profiles: dict[str, str] = {}
    for name in names:
        profile = None
        if args.profile:
            profile = RESULTS / f"profile-{name}-{stamp}.txt"
            profiles[name] = str(profile.relative_to(ROOT))
        print(f"==> {name}: {jobs} jobs, concurrency {args.concurrency}", flush=True)
        row = await run_one(name, jobs, args.concurrency, profile)
        rows.append(row)
        print(f"    {row.jobs_per_s} jobs/s" if row.ok else f"    FAILED: {row.error}", flush=True)
    fastest, ratio = ratios(rows)
    print()
    print(
        f"Engine overhead: {jobs} no-op jobs, concurrency {args.concurrency}, "
        f"one worker process each; ratio = jobs/s / fastest peer's ({fastest})"
    )
    if args.profile:
        print("(profiled under py-spy: timings are not comparable with unprofiled runs)")
    print(table(rows, ratio))
    result: dict[str, Any] = {
        "benchmark": "engine-overhead",
        "at": stamp,
        "jobs": jobs,
        "concurrency": args.concurrency,
        "profiled": bool(args.profile),
        "fastest_peer": fastest,
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": versions(),
        "rows": [{**asdict(r), "ratio_to_fastest_peer": ratio.get(r.system)} for r in rows],
        "profiles": profiles,
    }
    out = RESULTS / f"engine-overhead-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    png = out.with_suffix(".png")
    try:
        chart(
            rows,
            ratio,
            png,
            f"{jobs} no-op jobs, one worker process, concurrency "
            f"{args.concurrency} ({time.strftime('%Y-%m-%d')})",
        )
        print(f"wrote {out.relative_to(ROOT)} and {png.relative_to(ROOT)}")
    except Exception as exc:
        print(f"wrote {out.relative_to(ROOT)}; no chart: {exc}")
    if args.profile:
        from bench.engines.hotspots import summarise

        for name, path in profiles.items():
            if (ROOT / path).exists():
                print(f"\n{name}: hot spots ({path})")
                print(summarise(ROOT / path))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, help="jobs per system (default 20000)")
    parser.add_argument("--quick", action="store_true", help="2000 jobs per system")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="jobs in flight per worker, the same for every system",
    )
    parser.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy each worker; writes raw stacks and prints hot spots",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
