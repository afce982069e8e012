"""The file library over a real database and the local blob store (both dialects)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from copydesk.blobs.local import LocalBlobStore
from copydesk.errors import FileNotFound, PayloadTooLarge
from copydesk.extraction import Extracted, ExtractionFailed
from copydesk.library import Library
from copydesk.store import CursorQuery
from copydesk.stores.sql import SQLFileStore, SQLStore

LIMIT = 256 * 1024


class Source:
    """An upload body: ``total`` bytes of ``byte`` in ``size`` chunks, counting what was
    pulled."""

    def __init__(self, total: int, size: int = 8192, byte: bytes = b"a") -> None:
        self.total, self.size, self.byte, self.pulled = total, size, byte, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            n = min(self.size, self.total - self.pulled)
            self.pulled += n
            yield self.byte * n


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def blobs_in(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "files"


def library(store: SQLStore, root: Path, **kwargs: object) -> Library:
    return Library(SQLFileStore(store), LocalBlobStore(root), LIMIT, **kwargs)  # type: ignore[arg-type]


async def test_upload_streams_hashes_and_stores(store: SQLStore, root: Path) -> None:
    org = await store.create_organization("acme")
    lib = library(store, root)
    body = Source(LIMIT)
    stored = await lib.upload(org.id, "notes.txt", body)
    assert stored.size_bytes == LIMIT
    assert stored.sha256 == hashlib.sha256(b"a" * LIMIT).hexdigest()
    assert (stored.status, stored.extension, stored.mime_type) == (
        "in_progress",
        "txt",
        "text/plain",
    )
    _, chunks = await lib.download(org.id, stored.id)
    assert b"".join([c async for c in chunks]) == b"a" * LIMIT


async def test_limit_is_enforced_while_reading(store: SQLStore, root: Path) -> None:
    org = await store.create_organization("acme")
    lib = library(store, root)
    body = Source(100 * LIMIT)
    with pytest.raises(PayloadTooLarge):
        await lib.upload(org.id, "big.txt", body)
    assert body.pulled <= LIMIT + body.size  # stopped at the limit, not at the end
    assert blobs_in(root) == []  # the temporary file is gone
    assert (await lib.page(org.id, CursorQuery())).items == []


async def test_delete_removes_the_bytes(store: SQLStore, root: Path) -> None:
    org = await store.create_organization("acme")
    lib = library(store, root)
    stored = await lib.upload(org.id, "a.txt", Source(10))
    assert len(blobs_in(root)) == 1
    await lib.delete(org.id, stored.id)
    assert blobs_in(root) == []
    with pytest.raises(FileNotFound):
        await lib.download(org.id, stored.id)


async def test_processing_outcomes(store: SQLStore, root: Path) -> None:
    org = await store.create_organization("acme")

    def extract(data: bytes, extension: str) -> Extracted:
        if data.startswith(b"bad"):
            raise ExtractionFailed("the document is encrypted")
        if data.startswith(b"bug"):
            raise RuntimeError("boom")
        return Extracted(text=data.decode(), word_count=len(data.split()))

    lib = library(store, root, extract=extract)
    good = await lib.upload(org.id, "good.txt", body(b"one two three four"))
    bad = await lib.upload(org.id, "bad.txt", body(b"bad"))
    bug = await lib.upload(org.id, "bug.txt", body(b"bug"))
    assert await lib.process_pending(limit=10) == 3
    assert await lib.process_pending(limit=10) == 0
    got = {f.id: f for f in (await lib.page(org.id, CursorQuery())).items}
    assert (got[good.id].status, got[good.id].word_count) == ("completed", 4)
    assert got[bad.id].status == "failed"
    assert "the document is encrypted" in (got[bad.id].error or "")
    assert got[bug.id].status == "failed"
    assert "RuntimeError" in (got[bug.id].error or "")
    await lib.retry(org.id, [bad.id])
    assert (await lib.get(org.id, bad.id)).status == "in_progress"
