"""The ``copydesk`` command. Commands are thin: parse, call one service, print."""

from __future__ import annotations

import asyncio
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
from copydesk.config import Settings
from copydesk.errors import AgentDefinitionInvalid, CopydeskError, NotFound

T = TypeVar("T")

cli = typer.Typer(help="Copydesk: self-hosted no-code writing agents.", no_args_is_help=True)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
agents_cli = typer.Typer(help="Deploy and inspect agents.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(agents_cli, name="agents")
cli.add_typer(db_cli, name="db")

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


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived process's loop on uvloop when it is installed (it is, with
    uvicorn[standard], on Linux): the server and the worker spend their time in I/O."""
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
            # Load the default model now rather than on the first request (llama.cpp holds
            # the GIL while it loads, which would stall that request and every other).
            started = time.perf_counter()
            provider = await app.providers.get(None)
            out.print(
                f"provider {settings.default_provider!r} ({type(provider).__name__}) ready in "
                f"{time.perf_counter() - started:.1f}s",
                highlight=False,
            )
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
            w = app.worker()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, w.stop)
            out.print(
                f"COPYDESK_WORKER {w.owner} engine={settings.resolved_engine}", highlight=False
            )
            sys.stdout.flush()
            await w.run()

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


def main() -> None:
    cli()
