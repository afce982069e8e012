"""The ``BlobStore`` contract, run against every adapter: ``LocalBlobStore`` on a tmp folder
and ``S3BlobStore`` against a real S3-compatible HTTP server (moto's, on a free loopback
port). Then the Files API's ``Library`` and the whole ``App`` on S3.

Every test gets a fresh bucket (S3) or folder (local); nothing is shared between tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from pydantic import ValidationError

from copydesk.app import App
from copydesk.blobs import BlobNotFound, BlobStore
from copydesk.blobs.local import LocalBlobStore
from copydesk.blobs.s3 import S3BlobStore
from copydesk.config import Settings
from copydesk.errors import FileNotFound
from copydesk.library import Library
from copydesk.stores.sql import SQLFileStore, SQLStore

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: the tests' part size, so 12 MiB is three parts
REGION = "us-east-1"
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


# --- the S3-compatible server -------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real moto S3 server in a thread on a free loopback port; its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials; no real AWS config file or profile on this machine is read."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_admin(s3_server: str, aws_env: None) -> Any:
    """A plain boto3 client on the server, to set up and inspect (not the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"copydesk-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name)
    return name


def s3_leftovers(admin: Any, bucket: str) -> list[str]:
    """Every object in the bucket, and every multipart upload still pending."""
    objects = admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [o["Key"] for o in objects] + [f"pending upload of {u['Key']}" for u in uploads]


def local_leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]


# --- one harness per adapter --------------------------------------------------------


@dataclass
class Harness:
    """A store under test, a second store on the same backing in another namespace
    (another folder; the same bucket under another prefix), and everything left behind."""

    kind: str
    store: BlobStore
    sibling: BlobStore
    leftovers: Callable[[], list[str]]


@pytest.fixture(params=["local", "s3"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "local":
        root = tmp_path / "files"
        yield Harness(
            "local",
            LocalBlobStore(root / "a"),
            LocalBlobStore(root / "b"),
            lambda: local_leftovers(root),
        )
        return
    admin = request.getfixturevalue("s3_admin")
    name = request.getfixturevalue("bucket")
    endpoint = request.getfixturevalue("s3_server")
    stores = [
        S3BlobStore(
            name,
            prefix=prefix,
            endpoint_url=endpoint,
            region=REGION,
            part_size=PART,
            **CREDENTIALS,
        )
        for prefix in ("tenant-a/files", "tenant-b/files")
    ]
    try:
        yield Harness("s3", stores[0], stores[1], lambda: s3_leftovers(admin, name))
    finally:
        for store in stores:
            await store.close()


async def stream(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Broken(Exception):
    """The upload stream failed (a client that went away, a limit passed)."""


async def failing(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """``data`` in chunks, then an error instead of the end."""
    async for chunk in stream(data, size):
        yield chunk
    raise Broken("the client went away")


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


# --- the contract -------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(0, id="empty"),
        pytest.param(1, id="1B"),
        pytest.param(300 * 1024, id="300KiB"),
        pytest.param(PART, id="one-part"),
        pytest.param(12 * MiB, id="12MiB-three-parts"),
    ],
)
async def test_put_read_and_open_round_trip(harness: Harness, size: int) -> None:
    data = os.urandom(size)
    assert await harness.store.put("blob.bin", stream(data)) == size
    assert await harness.store.read("blob.bin") == data
    chunks = [chunk async for chunk in harness.store.open("blob.bin", chunk_size=MiB)]
    assert all(0 < len(chunk) <= MiB for chunk in chunks)
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
    assert len(harness.leftovers()) == 1  # the blob itself, no temporary or pending upload


async def test_put_skips_empty_chunks_and_uneven_sizes(harness: Harness) -> None:
    data = os.urandom(PART + 12345)

    async def uneven() -> AsyncIterator[bytes]:
        yield b""
        yield data[:7]
        yield b""
        yield data[7 : 3 * MiB]
        yield data[3 * MiB :]

    assert await harness.store.put("uneven.bin", uneven()) == len(data)
    assert await harness.store.read("uneven.bin") == data


@pytest.mark.parametrize(
    "before_failure",
    [pytest.param(300 * 1024, id="within-one-part"), pytest.param(11 * MiB, id="after-two-parts")],
)
async def test_a_stream_that_fails_half_way_leaves_nothing(
    harness: Harness, before_failure: int
) -> None:
    with pytest.raises(Broken):
        await harness.store.put("broken.bin", failing(os.urandom(before_failure)))
    assert harness.leftovers() == []  # no object, no temporary file, no pending upload
    with pytest.raises(BlobNotFound):
        await harness.store.read("broken.bin")


async def test_a_failed_overwrite_keeps_the_previous_blob(harness: Harness) -> None:
    await harness.store.put("doc.txt", stream(b"version one"))
    with pytest.raises(Broken):
        await harness.store.put("doc.txt", failing(os.urandom(11 * MiB)))
    assert await harness.store.read("doc.txt") == b"version one"
    assert len(harness.leftovers()) == 1


async def test_a_cancelled_upload_leaves_nothing(harness: Harness) -> None:
    stalled = asyncio.Event()

    async def hangs() -> AsyncIterator[bytes]:
        async for chunk in stream(os.urandom(11 * MiB), 256 * 1024):
            yield chunk
        stalled.set()  # every earlier part has been sent by now
        await asyncio.Event().wait()
        yield b""  # never reached

    task = asyncio.create_task(harness.store.put("cancelled.bin", hangs()))
    await asyncio.wait_for(stalled.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert harness.leftovers() == []


async def test_overwrite_replaces_the_bytes(harness: Harness) -> None:
    await harness.store.put("doc.txt", stream(b"version one"))
    await harness.store.put("doc.txt", stream(b"two"))
    assert await harness.store.read("doc.txt") == b"two"


async def test_open_of_a_missing_key_raises_on_first_use(harness: Harness) -> None:
    chunks = harness.store.open("missing.txt")  # nothing happens until it is iterated
    with pytest.raises(BlobNotFound):
        await anext(chunks)
    with pytest.raises(BlobNotFound):
        await harness.store.read("missing.txt")


async def test_delete_is_idempotent(harness: Harness) -> None:
    await harness.store.put("gone.txt", stream(b"bytes"))
    await harness.store.delete("gone.txt")
    await harness.store.delete("gone.txt")
    await harness.store.delete("never-written.txt")
    with pytest.raises(BlobNotFound):
        await harness.store.read("gone.txt")
    assert harness.leftovers() == []


async def test_a_store_sees_only_its_own_namespace(harness: Harness) -> None:
    await harness.store.put("same.txt", stream(b"mine"))
    with pytest.raises(BlobNotFound):
        await harness.sibling.read("same.txt")
    await harness.sibling.put("same.txt", stream(b"theirs"))
    await harness.sibling.delete("same.txt")
    assert await harness.store.read("same.txt") == b"mine"


async def test_keys_that_could_escape_are_refused(harness: Harness) -> None:
    for key in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="invalid blob key"):
            await harness.store.put(key, stream(b"x"))


# --- S3 specifics -------------------------------------------------------------------


async def test_s3_keys_are_under_the_prefix_and_parts_are_used_above_one_part(
    s3_server: str, s3_admin: Any, bucket: str
) -> None:
    store = S3BlobStore(
        bucket,
        prefix="/copydesk/files/",
        endpoint_url=s3_server,
        region=REGION,
        part_size=PART,
        **CREDENTIALS,
    )
    try:
        await store.put("small.bin", stream(os.urandom(PART)))
        await store.put("big.bin", stream(os.urandom(12 * MiB)))
    finally:
        await store.close()
    assert sorted(s3_leftovers(s3_admin, bucket)) == [
        "copydesk/files/big.bin",
        "copydesk/files/small.bin",
    ]
    # A multipart object's ETag ends in -<number of parts>; a single PutObject's does not.
    small = s3_admin.head_object(Bucket=bucket, Key="copydesk/files/small.bin")
    big = s3_admin.head_object(Bucket=bucket, Key="copydesk/files/big.bin")
    assert "-" not in small["ETag"]
    assert big["ETag"].strip('"').endswith("-3")


async def test_s3_uses_the_standard_credential_chain(
    s3_server: str, s3_admin: Any, bucket: str
) -> None:
    store = S3BlobStore(bucket, endpoint_url=s3_server)  # region and keys from AWS_* vars
    try:
        await store.put("a.txt", stream(b"from the environment"))
        assert await store.read("a.txt") == b"from the environment"
    finally:
        await store.close()
    assert s3_leftovers(s3_admin, bucket) == ["a.txt"]


def test_s3_part_size_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        S3BlobStore("bucket", part_size=MiB)


# --- the Files API on S3 ------------------------------------------------------------


def text_body(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog. 0123456789\n"
    return (line * (size // len(line) + 1))[:size]


async def test_library_uploads_to_s3_and_downloads_the_same_bytes(
    store: SQLStore, s3_server: str, s3_admin: Any, bucket: str
) -> None:
    org = await store.create_organization("acme")
    blobs = S3BlobStore(
        bucket, prefix="files", endpoint_url=s3_server, region=REGION, part_size=PART, **CREDENTIALS
    )
    try:
        lib = Library(SQLFileStore(store), blobs, 32 * MiB)
        data = text_body(12 * MiB + 5)
        stored = await lib.upload(org.id, "notes.txt", stream(data, 100_000))
        assert stored.size_bytes == len(data)
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert s3_leftovers(s3_admin, bucket) == [f"files/{stored.storage_key}"]
        found, chunks = await lib.download(org.id, stored.id)
        assert found.id == stored.id
        assert await collect(chunks) == data
        await lib.delete(org.id, stored.id)
        assert s3_leftovers(s3_admin, bucket) == []
        with pytest.raises(FileNotFound):
            await lib.download(org.id, stored.id)
    finally:
        await blobs.close()


async def test_app_reads_the_blob_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, s3_server: str, s3_admin: Any, bucket: str
) -> None:
    monkeypatch.setenv("COPYDESK_BLOBS__KIND", "s3")
    monkeypatch.setenv("COPYDESK_BLOBS__S3_BUCKET", bucket)
    monkeypatch.setenv("COPYDESK_BLOBS__S3_PREFIX", "copydesk")
    monkeypatch.setenv("COPYDESK_BLOBS__S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("COPYDESK_BLOBS__S3_REGION", REGION)
    monkeypatch.setenv("COPYDESK_BLOBS__S3_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("COPYDESK_BLOBS__S3_SECRET_ACCESS_KEY", "testing")
    async with App(Settings()) as app:
        assert isinstance(app.blobs, S3BlobStore)
        org = await app.store.create_organization("acme")
        stored = await app.library.upload(org.id, "hello.txt", stream(b"hello from the app"))
        _, chunks = await app.library.download(org.id, stored.id)
        assert await collect(chunks) == b"hello from the app"
    assert s3_leftovers(s3_admin, bucket) == [f"copydesk/{stored.storage_key}"]


def test_s3_settings_need_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPYDESK_BLOBS__KIND", "s3")
    with pytest.raises(ValidationError, match="COPYDESK_BLOBS__S3_BUCKET"):
        Settings()
    monkeypatch.setenv("COPYDESK_BLOBS__S3_BUCKET", "b")
    monkeypatch.setenv("COPYDESK_BLOBS__S3_ACCESS_KEY_ID", "key-without-secret")
    with pytest.raises(ValidationError, match="or neither"):
        Settings()


def test_local_is_the_default() -> None:
    app = App(Settings())
    assert isinstance(app.blobs, LocalBlobStore)
