"""The ``FileStore`` contract for :class:`SQLFileStore`, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from copydesk.errors import FileNotFound, FileNotRetryable
from copydesk.store import CursorQuery, FileQuery, NewFile, Order, StoredFile
from copydesk.stores.sql import SQLFileStore, SQLStore

N_FILES = 123
ORDERS: tuple[Order, ...] = ("desc", "asc")


def new_file(
    org_id: str,
    name: str,
    *,
    ext: str = "txt",
    status: str = "in_progress",
    graph_ids: list[str] | None = None,
) -> NewFile:
    file_id = str(uuid.uuid4())
    return NewFile(
        id=file_id,
        org_id=org_id,
        name=name,
        mime_type="text/plain",
        extension=ext,
        size_bytes=len(name),
        sha256="0" * 64,
        storage_key=f"{file_id}.{ext}",
        status=status,  # type: ignore[arg-type]
        graph_ids=graph_ids or [],
    )


async def org(store: SQLStore, name: str = "acme") -> str:
    return (await store.create_organization(name)).id


def ids(items: list[StoredFile]) -> list[str]:
    return [f.id for f in items]


async def walk(files: SQLFileStore, org_id: str, query: FileQuery) -> list[str]:
    """Every page, following the cursor the way the SDK does."""
    seen: list[str] = []
    cursor = query.cursor
    while True:
        page = await files.list_files(
            org_id,
            FileQuery(
                cursor=cursor,
                status=query.status,
                file_types=query.file_types,
                graph_id=query.graph_id,
            ),
        )
        seen += ids(page.items)
        if not page.has_more or not page.items:
            return seen
        cursor = CursorQuery(limit=cursor.limit, order=cursor.order, after=page.items[-1].id)


async def test_create_get_is_org_scoped(store: SQLStore) -> None:
    files = SQLFileStore(store)
    a, b = await org(store, "a"), await org(store, "b")
    created = await files.create_file(new_file(a, "notes.txt", graph_ids=["g1"]))
    assert created.status == "in_progress"
    assert created.graph_ids == ["g1"]
    assert created.created_at.tzinfo is not None
    assert created.text is None
    assert created.word_count is None
    assert await files.get_file(a, created.id) == created
    assert await files.get_file(b, created.id) is None
    assert await files.delete_file(b, created.id) is None
    assert await files.get_file(a, created.id) is not None


@pytest.mark.parametrize("order", ORDERS)
async def test_cursor_paging_like_agents(store: SQLStore, order: Order) -> None:
    files = SQLFileStore(store)
    a = await org(store)
    made = [(await files.create_file(new_file(a, f"f{i}.txt"))).id for i in range(N_FILES)]
    expected = made if order == "asc" else made[::-1]
    for limit in (1, 10, 50, 100):
        got = await walk(files, a, FileQuery(cursor=CursorQuery(limit=limit, order=order)))
        assert got == expected
    page = await files.list_files(
        a, FileQuery(cursor=CursorQuery(limit=5, order=order, before=expected[20]))
    )
    assert ids(page.items) == expected[15:20]
    assert page.has_more is True
    page = await files.list_files(
        a, FileQuery(cursor=CursorQuery(limit=5, order=order, after=expected[20]))
    )
    assert ids(page.items) == expected[21:26]
    both = await files.list_files(
        a,
        FileQuery(
            cursor=CursorQuery(limit=50, order=order, after=expected[10], before=expected[14])
        ),
    )
    assert ids(both.items) == expected[11:14]
    unknown = await files.list_files(a, FileQuery(cursor=CursorQuery(after="nope")))
    assert unknown.items == []
    assert unknown.has_more is False
    other = await org(store, "other")
    assert (await files.list_files(other, FileQuery())).items == []


async def test_filters(store: SQLStore) -> None:
    files = SQLFileStore(store)
    a = await org(store)
    txt = await files.create_file(new_file(a, "a.txt"))
    pdf = await files.create_file(new_file(a, "b.pdf", ext="pdf", graph_ids=["g"]))
    png = await files.create_file(
        new_file(a, "c.png", ext="png", status="completed", graph_ids=["g", "h"])
    )

    async def listed(**kw: object) -> list[str]:
        return await walk(files, a, FileQuery(cursor=CursorQuery(limit=1, order="asc"), **kw))  # type: ignore[arg-type]

    assert await listed(status="completed") == [png.id]
    assert await listed(status="in_progress") == [txt.id, pdf.id]
    assert await listed(status="failed") == []
    assert await listed(file_types=("pdf", "png")) == [pdf.id, png.id]
    assert await listed(file_types=("txt",), status="in_progress") == [txt.id]
    assert await listed(graph_id="g") == [pdf.id, png.id]
    assert await listed(graph_id="h") == [png.id]
    assert await listed(graph_id="zzz") == []


async def test_claim_process_and_retry(store: SQLStore) -> None:
    files = SQLFileStore(store)
    a = await org(store)
    doc = await files.create_file(new_file(a, "a.txt"))
    img = await files.create_file(new_file(a, "i.png", ext="png", status="completed"))
    other = await files.create_file(new_file(a, "b.txt"))
    claimed = await files.claim_files(1, lease_s=60)
    assert ids(claimed) == [doc.id]
    # Held under a live lease: not claimed twice.
    assert ids(await files.claim_files(10, lease_s=60)) == [other.id]
    assert await files.claim_files(10, lease_s=60) == []
    done = await files.set_processed(doc.id, "completed", text="hello world", word_count=2)
    assert done is not None
    assert (done.status, done.text, done.word_count) == ("completed", "hello world", 2)
    failed = await files.set_processed(other.id, "failed", error="corrupt")
    assert failed is not None
    assert failed.error == "corrupt"
    assert await files.claim_files(10, lease_s=60) == []
    with pytest.raises(FileNotRetryable):
        await files.retry_files(a, [other.id, doc.id])
    with pytest.raises(FileNotFound):
        await files.retry_files(await org(store, "b"), [other.id])
    with pytest.raises(FileNotFound):
        await files.retry_files(a, [str(uuid.uuid4())])
    assert (await files.get_file(a, other.id)).status == "failed"  # type: ignore[union-attr]
    retried = await files.retry_files(a, [other.id])
    assert [(f.id, f.status, f.error) for f in retried] == [(other.id, "in_progress", None)]
    assert ids(await files.claim_files(10, lease_s=60)) == [other.id]
    assert img.status == "completed"


async def test_expired_lease_is_claimed_again(store: SQLStore) -> None:
    files = SQLFileStore(store)
    a = await org(store)
    doc = await files.create_file(new_file(a, "a.txt"))
    assert ids(await files.claim_files(1, lease_s=0.05)) == [doc.id]
    await asyncio.sleep(0.1)
    assert ids(await files.claim_files(1, lease_s=60)) == [doc.id]


async def test_concurrent_claims_never_share_a_file(store: SQLStore) -> None:
    files = SQLFileStore(store)
    a = await org(store)
    made = {(await files.create_file(new_file(a, f"{i}.txt"))).id for i in range(40)}
    batches = await asyncio.gather(*(files.claim_files(3, lease_s=60) for _ in range(20)))
    claimed = [f.id for batch in batches for f in batch]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= made


async def test_delete_returns_the_row(store: SQLStore) -> None:
    files = SQLFileStore(store)
    a = await org(store)
    doc = await files.create_file(new_file(a, "a.txt"))
    removed = await files.delete_file(a, doc.id)
    assert removed is not None
    assert removed.storage_key == doc.storage_key
    assert await files.get_file(a, doc.id) is None
    assert await files.delete_file(a, doc.id) is None
