"""The ``copydesk`` command. Commands are thin: parse, call one service, print."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from copydesk.app import App
from copydesk.client import (
    DEFAULT_BASE_URL,
    Client,
    ExportFormat,
    ServerError,
    ServerUnreachable,
    content_type,
)
from copydesk.config import Settings
from copydesk.errors import AgentDefinitionInvalid, CopydeskError, NotFound

T = TypeVar("T")

cli = typer.Typer(help="Copydesk: self-hosted no-code writing agents.", no_args_is_help=True)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
agents_cli = typer.Typer(help="Deploy and inspect agents.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(agents_cli, name="agents")
jobs_cli = typer.Typer(
    help="Batches and jobs on a running server, over HTTP (key: --api-key or WRITER_API_KEY).",
    no_args_is_help=True,
)
cli.add_typer(db_cli, name="db")
cli.add_typer(jobs_cli, name="jobs")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID = 4


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        err.print("[red]Invalid configuration:[/red]")
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "settings"
            err.print(f"  COPYDESK_{where.upper()}: {problem['msg']}")
        raise typer.Exit(EXIT_USAGE) from exc


def print_table(table: Table) -> None:
    """Print a table; piped output gets the table's full width, so ids are never cut."""
    if out.is_terminal:
        out.print(table)
        return
    natural = out.measure(table, options=out.options.update_width(10_000)).maximum
    Console(soft_wrap=True, width=max(out.width, natural)).print(table)


#: Young-generation collections every 20,000 net allocations instead of 700: a worker
#: allocates tens of short-lived objects per job, and the default threshold spent 10-18 %
#: of a busy worker's samples in the collector (bench/README.md, engine overhead).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Fewer collections for a long-lived process: everything loaded so far (modules,
    settings) is moved out of the collector's view, and young collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived process's loop on uvloop when it is installed (it is, with
    uvicorn[standard], on Linux): the server and the worker spend their time in I/O."""
    tune_gc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def run(settings: Settings, body: Callable[[App], Awaitable[T]]) -> T:
    """Open the app, run one service call, translate our errors into exit codes."""

    async def main() -> T:
        async with App(settings) as app:
            return await body(app)

    with exit_codes():
        return asyncio.run(main())


async def open_default_provider(app: App) -> None:
    """Open the default provider before taking work rather than on the first job or
    request: its clients are built (or its model loaded: llama.cpp holds the GIL while
    it loads, which would stall every request and call meanwhile)."""
    started = time.perf_counter()
    provider = await app.providers.get(None)
    out.print(
        f"provider {app.settings.default_provider!r} ({type(provider).__name__}) ready in "
        f"{time.perf_counter() - started:.1f}s",
        highlight=False,
    )


@contextmanager
def exit_codes() -> Iterator[None]:
    """Our errors become a message on stderr and an exit code, not a traceback."""
    try:
        yield
    except AgentDefinitionInvalid as exc:
        err.print(f"[red]Invalid agent definition[/red] in {escape(exc.source)}:")
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False)
        raise typer.Exit(EXIT_INVALID) from exc
    except NotFound as exc:
        err.print(f"[red]{escape(exc.message)}[/red]")
        raise typer.Exit(EXIT_NOT_FOUND) from exc
    except CopydeskError as exc:
        err.print(f"[red]{escape(exc.message)}[/red]")
        raise typer.Exit(1) from exc


# --- serve ------------------------------------------------------------------------------


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (0 picks a free one)")] = None,
    agents: Annotated[
        list[Path] | None, typer.Option("--agents", help="agent files or folders to deploy")
    ] = None,
    workers: Annotated[
        bool, typer.Option("--workers/--no-workers", help="run job workers in this process")
    ] = True,
) -> None:
    """Run the HTTP API and, unless --no-workers, job workers in this process."""
    import uvicorn

    from copydesk.api import create_api

    settings = load_settings(host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    app = App(settings)
    agent_paths = [*settings.agents_dirs, *(agents or [])]

    async def main() -> None:
        async with app:
            bootstrap = await app.accounts.bootstrap_key(settings.bootstrap_org)
            org = await app.accounts.ensure_organization(settings.bootstrap_org)
            if agent_paths:
                deployed = await app.catalog.deploy_files(org.id, agent_paths, only_if_changed=True)
                for d in deployed:
                    state = "deployed" if d.changed else "unchanged"
                    out.print(f"agent {d.agent.id} {d.agent.name!r} v{d.agent.version} ({state})")
            await open_default_provider(app)
            api = create_api(app, manage_lifecycle=False, run_workers=workers)
            config = uvicorn.Config(
                api,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=False,
                lifespan="on",
                # Longer than clients' idle pools keep connections (httpx: 5 s), so a
                # client never sends on a connection the server is closing.
                timeout_keep_alive=65,
            )
            server = uvicorn.Server(config)
            serve_task = asyncio.create_task(server.serve())
            while not server.started and not serve_task.done():  # noqa: ASYNC110 - uvicorn has no event
                await asyncio.sleep(0.05)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()
                base_url = f"http://{bound[0]}:{bound[1]}"
                if bootstrap is not None:
                    out.print(
                        f"API key for organisation {bootstrap.organization.name!r} "
                        "(shown once, store it now):"
                    )
                    out.print(bootstrap.plaintext, soft_wrap=True, highlight=False)
                out.print(f"COPYDESK_LISTENING {base_url}", highlight=False)
                sys.stdout.flush()
            await serve_task

    with exit_codes():
        run_loop(main())


@cli.command()
def worker() -> None:
    """Run a job worker (no HTTP). SIGTERM stops claiming and finishes in-flight jobs."""
    import signal

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        async with App(settings) as app:
            await open_default_provider(app)
            w = app.worker()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, w.stop)
            running = asyncio.create_task(w.run(), name="worker")
            await w.until_ready(running)  # the line means: taking work now
            if not running.done():
                out.print(
                    f"COPYDESK_WORKER {w.owner} engine={settings.resolved_engine}",
                    highlight=False,
                )
                sys.stdout.flush()
            await running

    run_loop(main())


# --- keys ---------------------------------------------------------------------------------


@keys_cli.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="organisation name (created if new)")],
    name: Annotated[str, typer.Option(help="a label for the key")] = "default",
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    new = run(load_settings(), lambda app: app.accounts.create_key(org, name))
    err.print(f"key {new.key.id} (prefix {new.key.prefix}) for organisation {org!r}:", markup=False)
    out.print(new.plaintext, highlight=False, soft_wrap=True)


@keys_cli.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option("--org", help="only this organisation")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List keys (never their secrets)."""
    rows = run(load_settings(), lambda app: app.accounts.list_keys(org))
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "id": k.id,
                        "prefix": k.prefix,
                        "name": k.name,
                        "organization": o.name,
                        "created_at": k.created_at.isoformat(),
                        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    }
                    for k, o in rows
                ]
            )
        )
        return
    table = Table("id", "prefix", "name", "organisation", "created", "revoked")
    for k, o in rows:
        table.add_row(
            k.id,
            k.prefix,
            k.name,
            o.name,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    print_table(table)


@keys_cli.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="key id or prefix")]) -> None:
    """Revoke a key: it stops working at once."""
    revoked = run(load_settings(), lambda app: app.accounts.revoke_key(key))
    out.print(f"revoked key {revoked.id} (prefix {revoked.prefix})")


# --- agents -------------------------------------------------------------------------------


@agents_cli.command("deploy")
def agents_deploy(
    paths: Annotated[list[Path], typer.Argument(help="agent YAML files or folders")],
    org: Annotated[
        str | None, typer.Option("--org", help="organisation (default: bootstrap)")
    ] = None,
) -> None:
    """Validate every file, then deploy each as a new immutable version."""
    settings = load_settings()

    async def body(app: App) -> list[str]:
        organization = await app.accounts.ensure_organization(org or settings.bootstrap_org)
        deployed = await app.catalog.deploy_files(organization.id, paths)
        return [
            f"deployed {d.agent.id} {d.agent.name!r} as version {d.agent.version} ({d.source})"
            for d in deployed
        ]

    for line in run(settings, body):
        out.print(line, highlight=False, markup=False)


@agents_cli.command("list")
def agents_list(
    org: Annotated[
        str | None, typer.Option("--org", help="organisation (default: bootstrap)")
    ] = None,
) -> None:
    """List deployed agents of an organisation."""
    from copydesk.store import CursorQuery

    settings = load_settings()

    async def body(app: App) -> list[list[str]]:
        organization = await app.accounts.organization(org or settings.bootstrap_org)
        rows: list[list[str]] = []
        after: str | None = None
        while True:
            page = await app.catalog.page(organization.id, CursorQuery(limit=100, after=after))
            rows += [
                [a.id, a.name, str(a.version), f"{a.last_deployed_at:%Y-%m-%d %H:%M}"]
                for a in page.items
            ]
            if not page.has_more or not page.items:
                return rows
            after = page.items[-1].id

    table = Table("id", "name", "version", "last deployed")
    for row in run(settings, body):
        table.add_row(*row)
    print_table(table)


@agents_cli.command("show")
def agents_show(
    agent_id: Annotated[str, typer.Argument(help="agent id")],
    org: Annotated[
        str | None, typer.Option("--org", help="organisation (default: bootstrap)")
    ] = None,
    version: Annotated[int | None, typer.Option(help="a past version")] = None,
) -> None:
    """Print an agent's deployed definition as JSON."""
    settings = load_settings()

    async def body(app: App) -> str:
        organization = await app.accounts.organization(org or settings.bootstrap_org)
        agent = await app.catalog.get(organization.id, agent_id, version)
        return json.dumps(
            {
                "id": agent.id,
                "name": agent.name,
                "status": agent.status,
                "version": agent.version,
                "last_deployed_at": agent.last_deployed_at.isoformat()
                if agent.last_deployed_at
                else None,
                "definition": agent.spec.to_document(),
            }
        )

    out.print_json(run(settings, body))


# --- db ---------------------------------------------------------------------------------------


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database schema to the newest version."""

    async def body(app: App) -> None:
        return None  # App.open() migrates

    run(load_settings(), body)
    out.print("database is at the newest schema")


# --- jobs (a running server, over HTTP) ------------------------------------------------------

#: ``jobs submit``: the batch ended with failed or cancelled rows.
EXIT_ROWS_FAILED = 1

BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url",
        envvar=["COPYDESK_BASE_URL", "WRITER_BASE_URL"],
        help="the server (env COPYDESK_BASE_URL or WRITER_BASE_URL)",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="WRITER_API_KEY",
        help="API key (env WRITER_API_KEY)",
        show_default=False,
    ),
]


def remote(base_url: str, api_key: str | None, body: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``body`` with a client of the server; its errors become exit code 2 with the
    server's messages."""
    if not api_key:
        err.print("no API key: pass --api-key or set WRITER_API_KEY", style="red", markup=False)
        raise typer.Exit(EXIT_USAGE)

    async def main() -> T:
        async with Client(base_url, api_key) as client:
            return await body(client)

    try:
        return asyncio.run(main())
    except ServerError as exc:
        for description in exc.descriptions:
            err.print(description, style="red", markup=False, highlight=False)
        raise typer.Exit(EXIT_USAGE) from exc
    except ServerUnreachable as exc:
        err.print(f"cannot reach the server: {exc.message}", style="red", markup=False)
        raise typer.Exit(EXIT_USAGE) from exc


def counts_line(counts: dict[str, Any]) -> str:
    return (
        f"{counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['cancelled']} cancelled, {counts['in_progress']} in progress "
        f"(of {counts['total']})"
    )


def export_format(fmt: str | None, path: Path | None) -> ExportFormat:
    chosen = fmt or ("csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl")
    if chosen not in ("jsonl", "csv"):
        err.print(f"--format is jsonl or csv, not {chosen!r}", style="red", markup=False)
        raise typer.Exit(EXIT_USAGE)
    return "csv" if chosen == "csv" else "jsonl"


async def write_export(client: Client, batch_id: str, fmt: ExportFormat, path: Path) -> None:
    """The export streamed into ``path`` (a temporary file renamed into place at the end)."""
    partial = path.with_name(path.name + ".tmp")
    with partial.open("wb") as f:
        async for chunk in client.results(batch_id, fmt):
            f.write(chunk)
    partial.replace(path)


class Follower:
    """Shows a batch's progress: a rich bar on a terminal, otherwise plain lines (at most
    one a second, and the last); logs each finished row to ``log`` as it ends."""

    def __init__(self, batch: dict[str, Any], log: Path | None) -> None:
        self.batch_id = batch["id"]
        self.total = int(batch["request_counts"]["total"])
        self.log = log
        self.plain = not (out.is_terminal and err.is_terminal)
        self.started = time.monotonic()
        self.done_at_start: int | None = None
        self.printed = 0.0
        self.counts: dict[str, Any] = batch["request_counts"]

    async def run(self, client: Client) -> dict[str, Any]:
        """Follow until the batch is done; its last progress (``status``, counts)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=self.plain,
        )
        task = progress.add_task(f"batch {self.batch_id[:8]}", total=self.total, counts="")
        last: dict[str, Any] = {"status": "in_progress", "request_counts": self.counts}
        log = self.log.open("a", encoding="utf-8") if self.log is not None else None
        try:
            with progress:
                async for event in client.events(self.batch_id):
                    if event.kind in ("progress", "done"):
                        last = event.data
                        self.counts = event.data["request_counts"]
                        finished = self.total - int(self.counts["in_progress"])
                        short = (
                            f"{self.counts['completed']} ok · {self.counts['failed']} failed"
                            f" · {self.counts['cancelled']} cancelled"
                        )
                        progress.update(task, completed=finished, counts=short)
                        self._plain_line(finished, final=event.kind == "done")
                    elif event.kind == "row":
                        if log is not None:
                            log.write(json.dumps(event.data) + "\n")
                            log.flush()
                        if event.data.get("status") != "completed":
                            custom = event.data.get("custom_id")
                            label = f"row {event.data.get('row_index')}" + (
                                f" ({custom})" if custom else ""
                            )
                            progress.console.print(
                                f"{label} {event.data.get('status')}: {event.data.get('error')}",
                                markup=False,
                                highlight=False,
                            )
        finally:
            if log is not None:
                log.close()
        return last

    def _plain_line(self, finished: int, *, final: bool) -> None:
        if not self.plain:
            return
        now = time.monotonic()
        if self.done_at_start is None:
            self.done_at_start = finished
        if not final and now - self.printed < 1.0:
            return
        self.printed = now
        eta = ""
        ran = finished - self.done_at_start
        if not final and ran > 0 and finished < self.total:
            seconds = (now - self.started) / ran * (self.total - finished)
            eta = f", ETA {seconds:.0f}s"
        err.print(
            f"batch {self.batch_id}: {finished}/{self.total} done; {counts_line(self.counts)}{eta}",
            markup=False,
            highlight=False,
        )


@jobs_cli.command("submit")
def jobs_submit(
    agent: Annotated[str, typer.Argument(help="application id (or its unique name)")],
    rows: Annotated[
        Path,
        typer.Argument(help="rows: .csv, .jsonl or .json", exists=True, dir_okay=False),
    ],
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="write the results here when the batch is done (.csv: CSV, otherwise JSONL)",
        ),
    ] = None,
    priority: Annotated[int | None, typer.Option(help="-100..100 (default -1)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate every row only")] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the batch id and return")
    ] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Create a batch from a file of rows, follow its progress, write its results.

    The batch id is printed on stdout. While it runs, each finished row is appended to
    OUT.part (JSON lines: row_index, custom_id, job_id, status, error); when it is done,
    the export (every row in row order, as `jobs export` writes it) replaces OUT and the
    .part file is removed. Exit code 0 when every row completed, 1 when any failed or
    was cancelled, 2 for a usage or server error (the server's message is printed).
    """
    try:
        kind = content_type(rows)
    except ValueError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(EXIT_USAGE) from exc
    body = rows.read_bytes()
    fmt = export_format(None, out_file)

    async def submit(client: Client) -> int:
        agent_id = await client.resolve_agent(agent)
        created = await client.submit_batch(
            agent_id, body, kind, priority=priority, dry_run=dry_run
        )
        if dry_run:
            return print_dry_run(created)
        batch_id = created["id"]
        out.print(batch_id, markup=False, highlight=False)
        sys.stdout.flush()
        err.print(
            f"batch {batch_id}: {created['request_counts']['total']} rows queued",
            markup=False,
            highlight=False,
        )
        if no_wait:
            return 0
        log = out_file.with_name(out_file.name + ".part") if out_file is not None else None
        try:
            last = await Follower(created, log).run(client)
        except asyncio.CancelledError:
            err.print(
                f"stopped following; the batch keeps running: copydesk jobs export {batch_id}",
                markup=False,
            )
            raise
        counts = last["request_counts"]
        if out_file is not None:
            await write_export(client, batch_id, fmt, out_file)
            if log is not None:
                log.unlink(missing_ok=True)
        err.print(
            f"batch {batch_id} {last['status']}: {counts_line(counts)}"
            + (f"; results in {out_file}" if out_file is not None else ""),
            markup=False,
            highlight=False,
        )
        ok = last["status"] == "completed" and counts["failed"] == counts["cancelled"] == 0
        return 0 if ok else EXIT_ROWS_FAILED

    try:
        code = remote(base_url, api_key, submit)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def print_dry_run(report: dict[str, Any]) -> int:
    err.print(
        f"dry run: {report['total']} rows, {report['valid']} valid, {report['invalid']} invalid",
        markup=False,
        highlight=False,
    )
    for row in report["rows"]:
        for problem in row["problems"]:
            custom = f" ({row['custom_id']})" if row["custom_id"] else ""
            err.print(
                f"row {row['row_index']}{custom}: {problem['description']}",
                markup=False,
                highlight=False,
            )
    return 0 if report["invalid"] == 0 else EXIT_ROWS_FAILED


@jobs_cli.command("export")
def jobs_export(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl or csv (default: by --out, else jsonl)")
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="file (default: stdout)")] = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Write a batch's results (every row in row order: inputs, status, output, error)."""
    chosen = export_format(fmt, out_file)

    async def export(client: Client) -> None:
        if out_file is not None:
            await write_export(client, batch_id, chosen, out_file)
            return
        async for chunk in client.results(batch_id, chosen):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    remote(base_url, api_key, export)


@jobs_cli.command("status")
def jobs_status(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the batch object")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Print a batch's status and counts."""
    batch = remote(base_url, api_key, lambda client: client.batch(batch_id))
    if as_json:
        out.print_json(json.dumps(batch))
        return
    out.print(
        f"batch {batch['id']} {batch['status']}: {counts_line(batch['request_counts'])}",
        markup=False,
        highlight=False,
    )


@jobs_cli.command("retry-failed")
def jobs_retry_failed(
    batch_id: Annotated[str, typer.Argument(help="batch id")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Queue a batch's failed rows again (same job ids); print the new counts."""
    batch = remote(base_url, api_key, lambda client: client.retry_batch(batch_id))
    out.print(
        f"batch {batch['id']} {batch['status']}: {counts_line(batch['request_counts'])}",
        markup=False,
        highlight=False,
    )


@jobs_cli.command("cancel")
def jobs_cancel(
    target: Annotated[str, typer.Argument(help="a job id or a batch id")],
    batch: Annotated[bool, typer.Option("--batch", help="TARGET is a batch")] = False,
    job: Annotated[bool, typer.Option("--job", help="TARGET is a job")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Cancel a job, or every queued and running row of a batch (without --job or --batch:
    a job with that id, else a batch). Harmless twice; prints the resulting status."""
    if batch and job:
        err.print("--batch and --job exclude each other", style="red", markup=False)
        raise typer.Exit(EXIT_USAGE)

    async def cancel(client: Client) -> str:
        if not batch:
            try:
                done = await client.cancel_job(target)
                return f"job {done['id']} {done['status']}"
            except ServerError as exc:
                if job or exc.status != 404:
                    raise
        cancelled = await client.cancel_batch(target)
        counts = counts_line(cancelled["request_counts"])
        return f"batch {cancelled['id']} {cancelled['status']}: {counts}"

    out.print(remote(base_url, api_key, cancel), markup=False, highlight=False)


def main() -> None:
    cli()
