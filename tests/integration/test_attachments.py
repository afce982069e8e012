"""File and media inputs over a real database, the local blob store and real HTTP servers:
each of the agent's options, another organisation's files, waiting for processing,
image parts, and URL fetching with its address policy and limits."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from copydesk.agents import AgentSpec, parse_agent
from copydesk.attachments import Attachments, FileText, Image
from copydesk.blobs.local import LocalBlobStore
from copydesk.errors import InvalidInputs, Problem
from copydesk.fetching import UrlFetcher
from copydesk.library import Library
from copydesk.store import StoredFile
from copydesk.stores.sql import SQLFileStore, SQLStore

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MB = 1024 * 1024


def agent(file_options: dict[str, Any] | None = None, **media: Any) -> AgentSpec:
    doc: dict[str, Any] = {
        "name": "Summariser",
        "prompt": "Summarise: {{ doc }} {{ pic }}",
        "inputs": [
            {"name": "doc", "input_type": "file", "required": False, "options": file_options},
            {"name": "pic", "input_type": "media", "required": False, "options": media or None},
        ],
    }
    return parse_agent(doc, "test")


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Kit:
    def __init__(self, store: SQLStore, root: Path, **kwargs: Any) -> None:
        self.files = SQLFileStore(store)
        self.library = Library(self.files, LocalBlobStore(root), 64 * MB)
        fetcher = UrlFetcher(kwargs.pop("allow", []), kwargs.pop("timeout_s", 5.0))
        self.attachments = Attachments(
            self.files, LocalBlobStore(root), fetcher, wait_s=kwargs.pop("wait_s", 2.0), **kwargs
        )

    async def upload(self, org_id: str, name: str, data: bytes, process: bool = True) -> StoredFile:
        stored = await self.library.upload(org_id, name, chunks(data))
        if process and stored.status == "in_progress":
            await self.library.process_pending(limit=10)
            found = await self.files.get_file(org_id, stored.id)
            assert found is not None
            return found
        return stored


@pytest.fixture
async def kit(store: SQLStore, tmp_path: Path) -> Kit:
    return Kit(store, tmp_path / "files")


async def check(
    kit: Kit, org_id: str, spec: AgentSpec, doc: list[str] | None = None, **kw: Any
) -> list[Problem]:
    values = {"doc": doc} if doc else {}
    if "pic" in kw:
        values["pic"] = kw.pop("pic")
    return await kit.attachments.check(org_id, spec, values, images_ok=kw.get("images_ok", True))


def rules(problems: list[Problem]) -> list[str]:
    return [p.rule for p in problems]


# --- acceptance checks ------------------------------------------------------------------


async def test_a_completed_file_of_the_org_is_accepted(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    file = await kit.upload(org.id, "notes.txt", b"three little words")
    assert await check(kit, org.id, agent(), [file.id]) == []


async def test_another_organisations_file_is_not_found(store: SQLStore, kit: Kit) -> None:
    acme = await store.create_organization("acme")
    other = await store.create_organization("other")
    file = await kit.upload(other.id, "secret.txt", b"not yours")
    [problem] = await check(kit, acme.id, agent(), [file.id])
    assert problem.rule == "file_not_found"
    assert "is not a file of this organisation" in problem.description
    [problem] = await check(kit, acme.id, agent(), ["no-such-file"])
    assert problem.rule == "file_not_found"


async def test_file_types_are_enforced(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    file = await kit.upload(org.id, "table.csv", b"a,b\n1,2\n")
    [problem] = await check(kit, org.id, agent({"file_types": ["pdf", "txt"]}), [file.id])
    assert problem.rule == "file_types"
    assert "is a .csv file; this input takes pdf, txt" in problem.description


async def test_max_file_size_mb_is_enforced(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    file = await kit.upload(org.id, "big.txt", b"word " * (MB // 5 + 10))
    [problem] = await check(kit, org.id, agent({"max_file_size_mb": 1}), [file.id])
    assert problem.rule == "max_file_size_mb"
    assert f"is {file.size_bytes} bytes; this input takes files of at most 1 MB" in (
        problem.description
    )


async def test_max_word_count_is_enforced(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    file = await kit.upload(org.id, "long.txt", b"word " * 30)
    assert file.word_count == 30
    [problem] = await check(kit, org.id, agent({"max_word_count": 20}), [file.id])
    assert problem.rule == "max_word_count"
    assert "has 30 words; this input takes at most 20" in problem.description
    assert await check(kit, org.id, agent({"max_word_count": 30}), [file.id]) == []


async def test_a_failed_file_is_refused_with_its_reason(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    file = await kit.upload(org.id, "broken.pdf", b"%PDF-1.4 garbage that is no pdf")
    assert file.status == "failed"
    [problem] = await check(kit, org.id, agent(), [file.id])
    assert problem.rule == "file_failed"
    assert "could not be processed" in problem.description


async def test_urls_need_url_in_upload_types(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    [problem] = await check(kit, org.id, agent(), ["https://example.com/a.pdf"])
    assert problem.rule == "upload_types"
    assert "takes only uploaded file ids" in problem.description
    url_only = agent({"upload_types": ["url"]})
    file = await kit.upload(org.id, "notes.txt", b"hello")
    [problem] = await check(kit, org.id, url_only, [file.id])
    assert problem.rule == "upload_types"


async def test_private_url_literals_are_refused_when_accepted(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    spec = agent({"upload_types": ["url", "file_id"]})
    for url in ("http://127.0.0.1/x.txt", "http://10.1.2.3/x.txt", "http://[::1]/a.html"):
        [problem] = await check(kit, org.id, spec, [url])
        assert problem.rule == "url"
        assert "private or reserved address" in problem.description
    [problem] = await check(kit, org.id, spec, ["ftp://example.com/a.txt"])
    assert "must be an http:// or https:// URL" in problem.description
    assert await check(kit, org.id, spec, ["https://example.com/a.txt"]) == []


async def test_media_inputs_take_images_within_their_options(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    png = await kit.upload(org.id, "logo.png", PNG)
    text = await kit.upload(org.id, "notes.txt", b"hello")
    assert await check(kit, org.id, agent(), pic=[png.id]) == []
    [problem] = await check(kit, org.id, agent(), pic=[text.id])
    assert (problem.rule, problem.input) == ("file_types", "pic")
    assert "is not an image" in problem.description
    [problem] = await check(kit, org.id, agent(file_types=["jpg"]), pic=[png.id])
    assert problem.rule == "file_types"
    big = await kit.upload(org.id, "big.png", PNG + b"\x00" * (MB + 1))
    [problem] = await check(kit, org.id, agent(max_image_size_mb=1), pic=[big.id])
    assert problem.rule == "max_image_size_mb"


async def test_images_need_a_provider_that_takes_them(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    png = await kit.upload(org.id, "logo.png", PNG)
    [problem] = await check(kit, org.id, agent(), pic=[png.id], images_ok=False)
    assert problem.rule == "provider_images"
    assert "provider cannot take images" in problem.description


# --- resolving at run time ----------------------------------------------------------------


async def test_resolve_gives_the_text_and_the_image(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    doc = await kit.upload(org.id, "notes.txt", b"The quarterly numbers went up.")
    png = await kit.upload(org.id, "logo.png", PNG)
    resolved = await kit.attachments.resolve(org.id, agent(), {"doc": [doc.id], "pic": [png.id]})
    [text] = resolved.texts["doc"]
    assert text == "The quarterly numbers went up."
    assert isinstance(text, FileText)
    assert (text.name, text.word_count, text.source) == ("notes.txt", 5, doc.id)
    [image] = resolved.images
    assert image == Image("logo.png", "image/png", PNG)
    assert image.data_url() == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert resolved.texts["pic"] == ["[image: logo.png]"]


async def test_resolve_waits_for_a_file_in_progress(store: SQLStore, kit: Kit) -> None:
    org = await store.create_organization("acme")
    doc = await kit.upload(org.id, "late.txt", b"finally here", process=False)
    assert doc.status == "in_progress"

    async def process_later() -> None:
        await asyncio.sleep(0.5)
        await kit.library.process_pending(limit=10)

    later = asyncio.create_task(process_later())
    resolved = await kit.attachments.resolve(org.id, agent(), {"doc": [doc.id]})
    await later
    assert resolved.texts["doc"] == ["finally here"]


async def test_resolve_fails_clearly_when_the_file_stays_in_progress(
    store: SQLStore, tmp_path: Path
) -> None:
    kit = Kit(store, tmp_path / "files", wait_s=0.3)
    org = await store.create_organization("acme")
    doc = await kit.upload(org.id, "stuck.txt", b"never processed", process=False)
    with pytest.raises(InvalidInputs) as caught:
        await kit.attachments.resolve(org.id, agent(), {"doc": [doc.id]})
    [problem] = caught.value.problems
    assert problem.rule == "file_in_progress"
    assert "still being processed after 0.3s" in problem.description


async def test_resolve_refuses_a_file_that_failed_while_waited_for(
    store: SQLStore, kit: Kit
) -> None:
    org = await store.create_organization("acme")
    doc = await kit.upload(org.id, "bad.docx", b"PK\x03\x04 not really a docx", process=False)
    later = asyncio.create_task(kit.library.process_pending(limit=10))
    with pytest.raises(InvalidInputs) as caught:
        await kit.attachments.resolve(org.id, agent(), {"doc": [doc.id]})
    await later
    assert [p.rule for p in caught.value.problems] == ["file_failed"]


# --- URL inputs against a real HTTP server ---------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body><h1>Launch</h1><p>We ship on Monday.</p></body></html>",
            content_type="text/html",
        )

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"word " * (MB // 2), content_type="text/plain")

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"word " * 8192)
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def to_loopback_literal(request: web.Request) -> web.StreamResponse:
        port = request.url.port
        raise web.HTTPFound(f"http://127.0.0.1:{port}/page")

    async def image(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/notes.txt", big)
    app.router.add_get("/stream", big_chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hop", to_loopback_literal)
    app.router.add_get("/logo", image)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    yield f"http://localhost:{port}"
    await runner.cleanup()


URL_AGENT = {"upload_types": ["url"], "file_types": ["html", "txt"], "max_file_size_mb": 1}


async def resolve_url(kit: Kit, url: str, **options: Any) -> list[str]:
    spec = agent({**URL_AGENT, **options})
    resolved = await kit.attachments.resolve("org", spec, {"doc": [url]})
    return resolved.texts["doc"]


async def url_problem(kit: Kit, url: str, **options: Any) -> Problem:
    with pytest.raises(InvalidInputs) as caught:
        await resolve_url(kit, url, **options)
    [problem] = caught.value.problems
    return problem


async def test_a_url_is_fetched_and_its_text_extracted(
    store: SQLStore, tmp_path: Path, site: str
) -> None:
    kit = Kit(store, tmp_path, allow=["localhost"])
    [text] = await resolve_url(kit, f"{site}/page")
    assert "Launch" in text
    assert "We ship on Monday." in text
    assert "<p>" not in text


async def test_loopback_is_refused_without_the_allow_list(
    store: SQLStore, tmp_path: Path, site: str
) -> None:
    kit = Kit(store, tmp_path)
    problem = await url_problem(kit, f"{site}/page")
    assert problem.rule == "url"
    assert "private or reserved address" in problem.description


async def test_a_redirect_to_a_private_address_is_refused(
    store: SQLStore, tmp_path: Path, site: str
) -> None:
    # 'localhost' is allowed by name; the redirect's 127.0.0.1 literal is not.
    kit = Kit(store, tmp_path, allow=["localhost"])
    problem = await url_problem(kit, f"{site}/hop")
    assert "127.0.0.1" in problem.description
    assert "private or reserved address" in problem.description


async def test_an_allowed_network_lets_the_address_through(
    store: SQLStore, tmp_path: Path, site: str
) -> None:
    kit = Kit(store, tmp_path, allow=["127.0.0.0/8"])
    [text] = await resolve_url(kit, f"{site}/hop")
    assert "We ship on Monday." in text


async def test_fetches_are_size_limited(store: SQLStore, tmp_path: Path, site: str) -> None:
    kit = Kit(store, tmp_path, allow=["localhost"])
    declared = await url_problem(kit, f"{site}/notes.txt", max_file_size_mb=1)
    assert declared.rule == "url"
    # 2.5 MB declared by Content-Length: refused before the body is read.
    assert "over the 1048576-byte limit" in declared.description
    chunked = await url_problem(kit, f"{site}/stream", max_file_size_mb=1)
    assert "over the 1048576-byte limit" in chunked.description


async def test_fetches_are_time_limited(store: SQLStore, tmp_path: Path, site: str) -> None:
    kit = Kit(store, tmp_path, allow=["localhost"], timeout_s=0.5)
    started = asyncio.get_running_loop().time()
    problem = await url_problem(kit, f"{site}/slow")
    assert asyncio.get_running_loop().time() - started < 3
    assert "no complete answer within 0.5s" in problem.description


async def test_fetched_documents_keep_the_type_and_word_rules(
    store: SQLStore, tmp_path: Path, site: str
) -> None:
    kit = Kit(store, tmp_path, allow=["localhost"])
    problem = await url_problem(kit, f"{site}/page", file_types=["pdf"])
    assert problem.rule == "file_types"
    problem = await url_problem(kit, f"{site}/page", max_word_count=3)
    assert problem.rule == "max_word_count"
    problem = await url_problem(kit, f"{site}/logo")
    assert problem.rule == "file_types"
    problem = await url_problem(kit, f"{site}/missing")
    assert "the server answered 404" in problem.description
