"""F1 upload throughput and memory: ``POST /v1/files`` on a real ``copydesk serve``, against a
bare Starlette endpoint that streams the same bytes to disk (the baseline).

Three loads, each against both servers: one 200 MiB file (Content-Length, body from a
generator), 50 x 1 MiB one after another on one keep-alive connection, and 50 x 1 MiB
from 8 concurrent clients. The files are ``.png`` (a PNG signature, then random bytes):
the upload path is the same for every type, and images are never read back by the
in-process worker, so what is measured is the upload alone.

The baseline is the least a durable upload needs: a temporary file in the target folder,
each chunk written as it arrives (straight from the event loop: a page-cache write), fsync
and rename in a thread; no key check, type sniffing, size metering, hashing or database
row. The blob store writes each chunk through a thread instead (``asyncio.to_thread``).
The ratio column is copydesk's MiB/s over the baseline's for the same load.

Each load runs ``--repeat`` times; the table shows the median wall time and the largest
server peak-RSS growth (``VmHWM`` after the load minus ``VmRSS`` before it, the peak reset
through ``/proc/<pid>/clear_refs`` first).

    python -m bench.upload
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.procs import ROOT, Proc, copydesk, cpu_s, spawn

MIB = 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINE_LISTENING = "BASELINE_LISTENING"


# --- the baseline server (run as `python -m bench.upload --baseline-server FOLDER`) ---------


def baseline_app(folder: Path) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def upload(request: Request) -> JSONResponse:
        fd, tmp_name = await asyncio.to_thread(tempfile.mkstemp, prefix=".upload-", dir=folder)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
                    size += len(chunk)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            name = f"{uuid.uuid4()}.png"
            await asyncio.to_thread(os.replace, tmp_name, folder / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return JSONResponse({"id": name, "size_bytes": size})

    return Starlette(routes=[Route("/v1/files", upload, methods=["POST"])])


def serve_baseline(folder: Path) -> None:
    """uvicorn on the same event loop (uvloop) and HTTP parser as ``copydesk serve``."""
    import uvicorn
    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        baseline_app(folder), log_level="warning", access_log=False, lifespan="off"
    )
    print(f"{BASELINE_LISTENING} http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


# --- the servers under test ----------------------------------------------------------------


class Target:
    """A running server: its name, URL, request headers and the pid to measure."""

    def __init__(self, name: str, proc: Proc, url: str, headers: dict[str, str]) -> None:
        self.name = name
        self.proc = proc
        self.url = url
        self.headers = headers

    @property
    def pid(self) -> int:
        return self.proc.popen.pid


def start_copydesk(stack: ExitStack, data: Path) -> Target:
    env = {
        "COPYDESK_DATA_DIR": str(data),
        "COPYDESK_CACHE_DIR": str(data.parent / "cache"),
        "COPYDESK_PROVIDERS__LOCAL__KIND": "deterministic",  # no model to load
        "COPYDESK_MAX_UPLOAD_MB": "250",
        "COPYDESK_LOG_LEVEL": "warning",
    }
    proc = copydesk("serve", "--port", "0", env=env)
    stack.callback(proc.stop)
    url = proc.wait_for("COPYDESK_LISTENING ")
    key = proc.line_after("API key for organisation")
    return Target("copydesk", proc, url, {"Authorization": f"Bearer {key}"})


def start_baseline(stack: ExitStack, folder: Path) -> Target:
    folder.mkdir(parents=True, exist_ok=True)
    proc = spawn([sys.executable, "-m", "bench.upload", "--baseline-server", str(folder)], {})
    stack.callback(proc.stop)
    url = proc.wait_for(BASELINE_LISTENING + " ")
    return Target("baseline", proc, url, {})


# --- memory ------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reset_peak(pid: int) -> int:
    """Reset VmHWM to the current RSS (where allowed); the RSS now, in KiB."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS")


# --- loads -------------------------------------------------------------------------------


def body_block() -> bytes:
    return PNG_MAGIC + os.urandom(MIB - len(PNG_MAGIC))


def _headers(target: Target, name: str, length: int) -> dict[str, str]:
    return {
        **target.headers,
        "Content-Disposition": f"attachment; filename={name}",
        "Content-Type": "application/octet-stream",
        "Content-Length": str(length),
    }


def _check(response: httpx.Response, length: int) -> None:
    if response.status_code != 200 or response.json().get("size_bytes") != length:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text[:500]}")


def one_big(target: Target, block: bytes, mib: int) -> int:
    def body() -> Iterator[bytes]:
        for _ in range(mib):
            yield block

    with httpx.Client(base_url=target.url, timeout=300) as client:
        length = mib * MIB
        _check(
            client.post("/v1/files", content=body(), headers=_headers(target, "big.png", length)),
            length,
        )
    return 1


def sequential(target: Target, block: bytes, count: int) -> int:
    with httpx.Client(base_url=target.url, timeout=60) as client:
        for i in range(count):
            response = client.post(
                "/v1/files", content=block, headers=_headers(target, f"s{i}.png", len(block))
            )
            _check(response, len(block))
    return count


def concurrent(target: Target, block: bytes, count: int, clients: int) -> int:
    async def run() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=target.url, timeout=60, limits=limits) as client:
            todo = iter(range(count))

            async def worker() -> None:
                for i in todo:
                    headers = _headers(target, f"c{i}.png", len(block))
                    response = await client.post("/v1/files", content=block, headers=headers)
                    _check(response, len(block))

            await asyncio.gather(*(worker() for _ in range(clients)))

    asyncio.run(run())
    return count


def measure(
    target: Target, load: str, total_bytes: int, repeat: int, run: Callable[[Target], int]
) -> dict[str, Any]:
    walls: list[float] = []
    growths: list[float] = []
    cpus: list[float] = []
    files = 0
    for _ in range(repeat):
        rss_before = reset_peak(target.pid)
        cpu0 = cpu_s(target.pid)
        started = time.perf_counter()
        files = run(target)
        walls.append(time.perf_counter() - started)
        cpus.append(cpu_s(target.pid) - cpu0)
        growths.append((_status_kib(target.pid, "VmHWM") - rss_before) / 1024)
    wall = statistics.median(walls)
    return {
        "load": load,
        "server": target.name,
        "files": files,
        "mib": round(total_bytes / MIB, 1),
        "repeat": repeat,
        "wall_s": round(wall, 3),
        "walls_s": [round(w, 3) for w in walls],
        "mib_per_s": round(total_bytes / MIB / wall, 1),
        "files_per_s": round(files / wall, 1),
        "server_cpu_s": round(statistics.median(cpus), 2),
        "peak_rss_growth_mib": round(max(growths), 1),
        "rss_before_mib": round(rss_before / 1024, 1),
    }


def run_all(big_mib: int, count: int, clients: int, repeat: int) -> list[dict[str, Any]]:
    block = body_block()
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-upload-")))
        targets = [
            start_copydesk(stack, scratch / "copydesk" / "data"),
            start_baseline(stack, scratch / "baseline"),
        ]
        for target in targets:  # first-request costs (imports, pools) out of the figures
            sequential(target, block, 2)
        loads: list[tuple[str, int, Callable[[Target], int]]] = [
            (f"1 x {big_mib} MiB", big_mib * MIB, lambda t: one_big(t, block, big_mib)),
            (f"{count} x 1 MiB sequential", count * MIB, lambda t: sequential(t, block, count)),
            (
                f"{count} x 1 MiB, {clients} clients",
                count * MIB,
                lambda t: concurrent(t, block, count, clients),
            ),
        ]
        for load, total, run in loads:
            pair = [measure(t, load, total, repeat, run) for t in targets]
            base = pair[1]["mib_per_s"]
            for row in pair:
                row["vs_baseline"] = round(row["mib_per_s"] / base, 2)
            rows += pair
        for target in targets:
            for line in target.proc.errors():
                print(f"  {target.name} said: {line.rstrip()[:300]}")
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [  # key, title, width, format of the value
        ("load", "load", -24, "s"),
        ("server", "server", -8, "s"),
        ("wall_s", "wall s", 7, ".2f"),
        ("mib_per_s", "MiB/s", 7, ".1f"),
        ("files_per_s", "files/s", 7, ".1f"),
        ("server_cpu_s", "CPU s", 6, ".2f"),
        ("peak_rss_growth_mib", "peak RSS +MiB", 13, ".1f"),
        ("vs_baseline", "ratio", 5, ".2f"),
    ]

    def cell(text: str, width: int) -> str:
        return text.ljust(-width) if width < 0 else text.rjust(width)

    print(" | ".join(cell(title, width) for _, title, width, _ in columns))
    print("-+-".join("-" * abs(width) for _, _, width, _ in columns))
    for row in rows:
        print(" | ".join(cell(format(row[k], f), w) for k, _, w, f in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mib", type=int, default=200)
    parser.add_argument("--count", type=int, default=50, help="1 MiB files per small load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        serve_baseline(args.baseline_server)
        return
    rows = run_all(args.big_mib, args.count, args.clients, args.repeat)
    print_table(rows)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"upload-{stamp}.json"
    meta = {
        "when": stamp,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
