"""The Files API (F1-F6) through the official ``writer-sdk`` against ``copydesk serve``.

Clients are strict and never retry (see ``CopydeskServer.client``). writer-sdk 3.0.0
always sends ``Content-Type: text/plain`` on uploads, so the server must decide the type
itself: these tests upload PNGs, PDFs and text through that very client.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import writerai

from tests.e2e.conftest import CopydeskServer
from tests.e2e.test_applications_sdk import check_envelope

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
PROCESS_TIMEOUT_S = 30.0


def png(seed: int = 0) -> bytes:
    """A valid 1x1 PNG whose pixel depends on ``seed`` (distinct files, distinct bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixel = zlib.compress(bytes([0, seed % 256, (seed // 256) % 256, 7]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel) + chunk(b"IEND", b"")
    )


def upload(sdk: writerai.Writer, name: str, content: bytes, **kwargs: Any) -> writerai.types.File:
    return sdk.files.upload(
        content,
        content_disposition=f"attachment; filename={name}",
        content_type="application/octet-stream",
        **kwargs,
    )


def wait_processed(sdk: writerai.Writer, file_id: str) -> writerai.types.File:
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while True:
        file = sdk.files.retrieve(file_id)
        if file.status != "in_progress" or time.monotonic() > deadline:
            return file
        time.sleep(0.1)


# --- upload, retrieve, download, delete ------------------------------------------------


def test_upload_text_file_is_processed_into_words(client: writerai.Writer) -> None:
    text = "Ceramic travel mugs keep coffee warm for hours.\nThey fit every cup holder.\n"
    uploaded = client.files.upload(
        content=text.encode(),
        content_disposition="attachment; filename=notes.txt",
        content_type="text/plain",
    )
    assert uploaded.name == "notes.txt"
    assert uploaded.graph_ids == []
    assert uploaded.status == "in_progress"
    assert uploaded.created_at.tzinfo is not None
    done = wait_processed(client, uploaded.id)
    extras = done.model_extra or {}
    assert done.status == "completed", extras.get("error")
    assert extras["word_count"] == len(text.split())
    assert extras["size_bytes"] == len(text.encode())
    assert extras["mime_type"] == "text/plain"


def test_image_is_completed_at_once_and_downloads_byte_for_byte(client: writerai.Writer) -> None:
    data = png(1)
    uploaded = upload(client, "pixel.png", data)
    assert uploaded.status == "completed"  # media: nothing to extract
    response = client.files.download(uploaded.id)
    assert response.read() == data
    assert response.http_response.headers["content-type"] == "image/png"
    assert client.files.retrieve(uploaded.id).id == uploaded.id


def test_large_download_is_byte_for_byte(client: writerai.Writer) -> None:
    data = b"%PDF-1.7\n" + os.urandom(3 * 1024 * 1024)
    uploaded = upload(client, "report.pdf", data)
    extras = uploaded.model_extra or {}
    assert extras["size_bytes"] == len(data)
    assert extras["mime_type"] == "application/pdf"
    downloaded = client.files.download(uploaded.id).read()
    assert hashlib.sha256(downloaded).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('attachment; filename="two words.txt"', "two words.txt"),
        ("attachment; filename='single.txt'", "single.txt"),
        ("attachment; filename*=UTF-8''na%C3%AFve.txt", "naïve.txt"),
        ("attachment; filename=plain.txt; filename*=UTF-8''%E2%9C%93.txt", "✓.txt"),
    ],
)
def test_upload_names_from_content_disposition(
    client: writerai.Writer, disposition: str, name: str
) -> None:
    uploaded = client.files.upload(
        b"hello", content_disposition=disposition, content_type="text/plain"
    )
    assert uploaded.name == name


def test_graph_id_is_stored_but_not_echoed_on_upload(client: writerai.Writer) -> None:
    graph = "3f1e0a9c-1111-4222-8333-444455556666"
    uploaded = upload(client, "graph.png", png(2), graph_id=graph)
    assert uploaded.graph_ids == []
    assert client.files.retrieve(uploaded.id).graph_ids == [graph]
    listed = [f.id for f in client.files.list(graph_id=graph)]
    assert listed == [uploaded.id]


def test_delete_then_404(client: writerai.Writer) -> None:
    uploaded = upload(client, "gone.png", png(3))
    deleted = client.files.delete(uploaded.id)
    assert deleted.id == uploaded.id
    assert deleted.deleted is True
    for call in (client.files.retrieve, client.files.download, client.files.delete):
        with pytest.raises(writerai.NotFoundError) as caught:
            call(uploaded.id)
        check_envelope(caught.value, 404, "NotFound")
    assert uploaded.id not in [f.id for f in client.files.list()]


def test_unknown_file_is_404(client: writerai.Writer) -> None:
    with pytest.raises(writerai.NotFoundError) as caught:
        client.files.retrieve(UNKNOWN_ID)
    check_envelope(caught.value, 404, "NotFound")


def test_another_organisations_file_is_404(server: CopydeskServer) -> None:
    with server.client() as mine:
        uploaded = upload(mine, "private.png", png(4))
    with server.client(server.new_key("files-other-org")) as theirs:
        for call in (theirs.files.retrieve, theirs.files.download, theirs.files.delete):
            with pytest.raises(writerai.NotFoundError):
                call(uploaded.id)
        with pytest.raises(writerai.NotFoundError):
            theirs.files.retry(file_ids=[uploaded.id])
        assert uploaded.id not in [f.id for f in theirs.files.list()]
    with server.client() as mine:
        assert mine.files.retrieve(uploaded.id).id == uploaded.id


# --- bad uploads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("tool.exe", b"MZ\x90\x00"),
        ("noextension", b"hello"),
        ("fake.pdf", b"just text, not a PDF"),
        ("fake.png", b"%PDF-1.7 renamed"),
        ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00"),
        ("fake.docx", b"not a zip"),
    ],
)
def test_unsupported_or_mismatched_type_is_400(
    client: writerai.Writer, name: str, content: bytes
) -> None:
    with pytest.raises(writerai.BadRequestError) as caught:
        upload(client, name, content)
    check_envelope(caught.value, 400, "BadRequest")


@pytest.mark.parametrize("disposition", ["attachment", "inline; name=x", "attachment; filename="])
def test_upload_without_filename_is_400(client: writerai.Writer, disposition: str) -> None:
    with pytest.raises(writerai.BadRequestError) as caught:
        client.files.upload(b"hello", content_disposition=disposition, content_type="text/plain")
    check_envelope(caught.value, 400, "BadRequest")


def test_retry_of_a_file_that_has_not_failed_is_400(client: writerai.Writer) -> None:
    uploaded = upload(client, "fine.png", png(5))
    with pytest.raises(writerai.BadRequestError) as caught:
        client.files.retry(file_ids=[uploaded.id])
    items = check_envelope(caught.value, 400, "BadRequest")
    assert items[0]["extras"]["status"] == "completed"
    with pytest.raises(writerai.NotFoundError):
        client.files.retry(file_ids=[UNKNOWN_ID])


def test_undecodable_document_fails_with_a_reason_and_can_be_retried(
    client: writerai.Writer,
) -> None:
    # A "PDF" with the right magic but no document inside: extraction must fail.
    uploaded = upload(client, "broken.pdf", b"%PDF-1.4\n%garbage, no objects\n")
    done = wait_processed(client, uploaded.id)
    assert done.status == "failed"
    assert (done.model_extra or {})["error"]
    assert client.files.retry(file_ids=[uploaded.id]).success is True
    assert wait_processed(client, uploaded.id).status == "failed"


# --- listing --------------------------------------------------------------------------


def test_list_auto_pages_both_orders_with_filters(
    launch: Callable[..., CopydeskServer],
) -> None:
    server = launch()
    with server.client() as sdk:
        images = [upload(sdk, f"img-{i:03d}.png", png(i)).id for i in range(105)]
        texts = [upload(sdk, f"doc-{i}.txt", f"text number {i}".encode()).id for i in range(3)]
        everything = images + texts
        assert [f.id for f in sdk.files.list()] == everything[::-1]
        assert [f.id for f in sdk.files.list(order="asc", limit=7)] == everything
        assert [f.id for f in sdk.files.list(order="desc", limit=100)] == everything[::-1]
        assert [f.id for f in sdk.files.list(file_types="png", order="asc")] == images
        assert [f.id for f in sdk.files.list(file_types="txt,.PDF", order="asc")] == texts
        completed_png = sdk.files.list(status="completed", file_types="png", limit=100)
        assert [f.id for f in completed_png] == images[::-1]
        first = sdk.files.list(limit=100)
        assert first.has_more is True
        assert len(first.data) == 100
        # before walks back towards the newest, keeping the listing order
        back = sdk.files.list(before=everything[50], order="asc", limit=5)
        assert [f.id for f in back.data] == everything[45:50]
        assert sdk.files.list(after=UNKNOWN_ID).data == []
        for bad in (0, 101):
            with pytest.raises(writerai.BadRequestError):
                sdk.files.list(limit=bad)


# --- size limit -----------------------------------------------------------------------


def _raw_upload_head(url: str, key: str, headers: list[str]) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 10)
    lines = [
        "POST /v1/files HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Authorization: Bearer {key}",
        "Content-Disposition: attachment; filename=big.txt",
        "Content-Type: text/plain",
        *headers,
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        part = sock.recv(65536)
        if not part:
            break
        received += part
    status = int(received.split(b" ", 2)[1])
    return status, received


def test_upload_over_limit_is_413_before_the_body_is_read(
    launch: Callable[..., CopydeskServer],
) -> None:
    server = launch(env={"COPYDESK_MAX_UPLOAD_MB": "1"})
    limit = 1024 * 1024
    # Content-Length over the limit: answered at once, without sending a byte of body.
    with _raw_upload_head(server.url, server.key, [f"Content-Length: {50 * limit}"]) as sock:
        status, head = _read_status(sock)
    assert status == 413, head
    assert b"x-should-retry: false" in head.lower()

    # Chunked, no Content-Length: the server stops once the body passes the limit, long
    # before the 50 MB this client would send.
    sent = 0
    with _raw_upload_head(server.url, server.key, ["Transfer-Encoding: chunked"]) as sock:
        piece = b"a" * 65536
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sock.settimeout(0.5)
        status = 0
        try:
            while sent < 50 * limit:
                sock.sendall(frame)
                sent += len(piece)
                sock.setblocking(False)
                try:
                    peek = sock.recv(65536, socket.MSG_PEEK)
                except BlockingIOError:
                    peek = b""
                finally:
                    sock.settimeout(0.5)
                if peek:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        status, head = _read_status(sock)
    assert status == 413, head
    assert sent < 10 * limit, f"the server read {sent} bytes before refusing"

    # Through the SDK: over the limit is 413 PayloadTooLarge; at the limit is fine.
    with server.client() as sdk:
        with pytest.raises(writerai.APIStatusError) as caught:
            upload(sdk, "big.txt", b"a" * (limit + 1))
        check_envelope(caught.value, 413, "PayloadTooLarge")
        assert (upload(sdk, "exact.txt", b"a" * limit).model_extra or {})["size_bytes"] == limit
        # Nothing of the refused uploads was kept: one row, one blob, no temporary file.
        assert [f.name for f in sdk.files.list()] == ["exact.txt"]
    blobs = [p for p in (server.data_dir / "files").rglob("*") if p.is_file()]
    assert [p.stat().st_size for p in blobs] == [limit]
