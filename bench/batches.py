"""Batches: the time to submit N rows in one request, and to export them, on SQLite and
on PostgreSQL (a real ``copydesk serve``).

The server runs with ``--no-workers``, so what is timed is the request alone: the body
read and parsed, every row validated against the agent (the example product agent: a
multi-value text input and a dropdown), the batch and N jobs stored in one transaction
(with their PgQueuer entries on PostgreSQL). Then the same batch is exported as JSONL
and as CSV (``GET /v1/batches/{id}/results``, streamed in row order, keyset pages of
1000 rows), and a ``dry_run`` of the same body is timed. Each timing is the median of
``--repeat`` runs, each on a new batch; the server's RSS is read after the last one.

    python -m bench.batches                    # N = 50000, both databases
    python -m bench.batches --rows 5000 --databases sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.procs import ROOT, copydesk, fresh_database, rss_mb

PRODUCT_ID = "6f1c2a9e-3b7d-4c52-9a0e-5d8f1b2c3a41"  # examples/agents/product-description.yaml
TONES = ["Playful", "Friendly", "Professional", "Luxurious", "Technical"]


def csv_body(rows: int) -> bytes:
    lines = ["custom_id,product_names,tone\n"]
    lines += [
        f"row-{i},Product {i} with a longer name|Variant {i % 7},{TONES[i % 5]}\n"
        for i in range(rows)
    ]
    return "".join(lines).encode()


def json_body(rows: int) -> bytes:
    return json.dumps(
        [
            {
                "custom_id": f"row-{i}",
                "product_names": [f"Product {i} with a longer name", f"Variant {i % 7}"],
                "tone": TONES[i % 5],
            }
            for i in range(rows)
        ]
    ).encode()


@contextlib.contextmanager
def server(database: str) -> Iterator[tuple[httpx.Client, int]]:
    with contextlib.ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-batches-")))
        env = {
            "COPYDESK_DATA_DIR": str(data / "data"),
            "COPYDESK_CACHE_DIR": str(data / "cache"),
            "COPYDESK_PROVIDERS__LOCAL__KIND": "deterministic",
            "COPYDESK_LOG_LEVEL": "warning",
        }
        if database == "postgres":
            env["COPYDESK_DATABASE_URL"] = stack.enter_context(fresh_database())
        proc = copydesk(
            "serve",
            "--port",
            "0",
            "--no-workers",
            "--agents",
            str(ROOT / "examples" / "agents"),
            env=env,
        )
        stack.callback(proc.stop)
        url = proc.wait_for("COPYDESK_LISTENING ")
        key = proc.line_after("API key for organisation")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
        stack.callback(client.close)
        yield client, proc.popen.pid


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def submit(client: httpx.Client, body: bytes, content_type: str, **params: str) -> httpx.Response:
    return client.post(
        f"/v1/applications/{PRODUCT_ID}/batches",
        content=body,
        headers={"content-type": content_type},
        params=params,
    )


def export(client: httpx.Client, batch_id: str, fmt: str) -> int:
    size = 0
    with client.stream("GET", f"/v1/batches/{batch_id}/results", params={"format": fmt}) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            size += len(chunk)
    return size


def run(database: str, rows: int, repeat: int) -> list[dict[str, Any]]:
    bodies = {"csv": (csv_body(rows), "text/csv"), "json": (json_body(rows), "application/json")}
    out: list[dict[str, Any]] = []
    with server(database) as (client, pid):
        batch_id = ""
        for name, (body, content_type) in bodies.items():
            times = []
            for _ in range(repeat):
                seconds, response = timed(lambda b=body, c=content_type: submit(client, b, c))
                assert response.status_code == 202, response.text[:500]
                batch_id = response.json()["id"]
                assert response.json()["request_counts"]["total"] == rows
                times.append(seconds)
            out.append(_row(database, f"submit {name}", rows, times, len(body)))
            dry = []
            for _ in range(repeat):
                seconds, response = timed(
                    lambda b=body, c=content_type: submit(client, b, c, dry_run="true")
                )
                assert response.status_code == 200, response.text[:500]
                dry.append(seconds)
            out.append(_row(database, f"dry_run {name}", rows, dry, len(body)))
        for fmt in ("jsonl", "csv"):
            times, size = [], 0
            for _ in range(repeat):
                seconds, size = timed(lambda f=fmt: export(client, batch_id, f))
                times.append(seconds)
            out.append(_row(database, f"export {fmt}", rows, times, size))
        for row in out:
            row["server_rss_mib_after"] = round(rss_mb(pid), 1)
    return out


def _row(database: str, what: str, rows: int, times: list[float], size: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "database": database,
        "operation": what,
        "rows": rows,
        "body_mib": round(size / 1024 / 1024, 2),
        "median_s": round(median, 3),
        "rows_per_s": round(rows / median),
        "runs_s": [round(t, 3) for t in times],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("database", "database", -9, "s"),
        ("operation", "operation", -13, "s"),
        ("rows", "rows", 7, "d"),
        ("body_mib", "MiB", 6, ".2f"),
        ("median_s", "median s", 8, ".2f"),
        ("rows_per_s", "rows/s", 7, "d"),
        ("server_rss_mib_after", "RSS MiB", 7, ".0f"),
    ]

    def cell(text: str, width: int) -> str:
        return text.ljust(-width) if width < 0 else text.rjust(width)

    print(" | ".join(cell(title, width) for _, title, width, _ in columns))
    print("-+-".join("-" * abs(width) for _, _, width, _ in columns))
    for row in rows:
        print(" | ".join(cell(format(row[k], f), w) for k, _, w, f in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgres")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for database in args.databases.split(","):
        results += run(database.strip(), args.rows, args.repeat)
    print_table(results)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"batches-{stamp}.json"
    meta = {
        "when": stamp,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
