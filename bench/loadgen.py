"""The load generator of the API benchmarks: wrk (https://github.com/wg/wrk, Debian package
``wrk``), a separate C process over loopback, driven by ``bench/wrk_api.lua``.

wrk keeps ``connections`` HTTP/1.1 keep-alive connections busy for ``duration`` seconds
(closed loop: a connection sends its next request when the answer arrives), across
``threads`` event-loop threads, and records every request's latency in an HdrHistogram.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

LUA = Path(__file__).with_name("wrk_api.lua")
MARKER = "BENCH_RESULT "


def wrk_version() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit(
            "wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or build it from "
            "https://github.com/wg/wrk"
        )
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].split(" Copyright")[0] if out else "wrk"


def wrk(
    base_url: str,
    paths: list[str],
    *,
    method: str = "GET",
    body: str = "",
    auth: str = "",
    connections: int = 32,
    threads: int = 1,
    duration_s: float = 10.0,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One wrk run; requests/s, latency percentiles (ms) and error counts."""
    if not paths:
        raise ValueError("no request paths")
    with tempfile.NamedTemporaryFile("w", prefix="bench-paths-", suffix=".txt") as f:
        f.write("\n".join(paths) + "\n")
        f.flush()
        env = {
            **os.environ,
            "BENCH_METHOD": method,
            "BENCH_PATHS": f.name,
            "BENCH_BODY": body,
            "BENCH_AUTH": auth,
        }
        command = [
            "wrk",
            f"--threads={min(threads, connections)}",
            f"--connections={connections}",
            f"--duration={max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            f"--script={LUA}",
            base_url,
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr}")
    raw = json.loads(lines[-1][len(MARKER) :])
    seconds = raw["duration_us"] / 1e6
    errors = {k[len("errors_") :]: v for k, v in raw.items() if k.startswith("errors_") and v}
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": errors,
    }


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, title, format); a missing value prints as ``-``."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    table = [[title for _, title, _ in columns]]
    table += [[cell(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for n, line in enumerate(table):
        print(
            " | ".join(
                c.rjust(w) if n and i > 1 else c.ljust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            print("-+-".join("-" * w for w in widths))
