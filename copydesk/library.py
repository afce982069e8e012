"""File operations (F1-F6): upload, read, list, delete, download, retry, and the processing
of uploaded documents into text (by a worker, never in the request path).

The type of an upload is decided from its file name's extension and its first bytes:
the Content-Type header is never trusted (writer-sdk 3.0.0 always sends ``text/plain``).
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from copydesk import extraction
from copydesk.blobs import BlobNotFound, BlobStore
from copydesk.errors import FileNotFound, InvalidRequest, PayloadTooLarge, Problem
from copydesk.extraction import ExtractionFailed
from copydesk.store import (
    CursorPage,
    CursorQuery,
    FileHook,
    FileQuery,
    FileStore,
    NewFile,
    StoredFile,
)

log = logging.getLogger("copydesk.library")

MAX_PAGE = 100
STATUSES = ("in_progress", "completed", "failed")
#: How much of the start of an upload decides its type.
HEAD_BYTES = 4096

#: Supported extensions and the MIME type a file of each is served with.
MIME_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "html": "text/html",
    "htm": "text/html",
    "txt": "text/plain",
    "csv": "text/csv",
    "eml": "message/rfc822",
    "md": "text/markdown",
    "json": "application/json",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}
IMAGES = frozenset({"png", "jpg", "jpeg", "gif", "webp"})
TEXT_TYPES = frozenset({"html", "htm", "txt", "csv", "eml", "md", "json"})
_ZIP = frozenset({"docx", "pptx", "xlsx"})


@dataclass(frozen=True)
class FileType:
    extension: str
    mime_type: str
    media: bool  # an image: stored as is, no text to extract


def _bad(description: str, rule: str) -> InvalidRequest:
    return InvalidRequest([Problem(description, rule, input="file")])


def extension_of(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""


def _magic_matches(ext: str, head: bytes) -> bool:
    if ext == "pdf":
        return head.startswith(b"%PDF")
    if ext in _ZIP:
        return head.startswith(b"PK\x03\x04")
    if ext == "png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if ext in ("jpg", "jpeg"):
        return head.startswith(b"\xff\xd8\xff")
    if ext == "gif":
        return head.startswith((b"GIF87a", b"GIF89a"))
    if ext == "webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return _looks_like_text(head)


_BINARY_MAGIC = (b"%PDF", b"PK\x03\x04", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF")


def _looks_like_text(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    if head.startswith(_BINARY_MAGIC):
        return False
    # UTF-8 or a legacy single-byte encoding (cp1252 CSVs) alike: control bytes other
    # than whitespace (and ESC) mark a binary file.
    return not any((b < 32 and b not in (9, 10, 12, 13, 27)) or b == 127 for b in head)


def detect_type(filename: str, head: bytes) -> FileType:
    """The type of an upload from its name's extension, confirmed by its first bytes.

    Raises InvalidRequest (400) for an unsupported extension or content that does not
    match it (a renamed binary, a corrupt file).
    """
    ext = extension_of(filename)
    if ext not in MIME_TYPES:
        supported = ", ".join(sorted(MIME_TYPES))
        shown = f"'.{ext}'" if ext else "no extension"
        raise _bad(
            f"unsupported file type ({shown} in {filename!r}); supported: {supported}",
            "unsupportedType",
        )
    if not _magic_matches(ext, head):
        raise _bad(
            f"the content of {filename!r} is not a valid .{ext} file "
            "(its first bytes do not match the type its name says)",
            "contentMismatch",
        )
    return FileType(extension=ext, mime_type=MIME_TYPES[ext], media=ext in IMAGES)


class _Metered:
    """Reads an upload stream once: counts, hashes and stops it at the size limit."""

    def __init__(self, stream: AsyncIterable[bytes], limit_bytes: int) -> None:
        self._it = aiter(stream)
        self._limit = limit_bytes
        self._buffer: list[bytes] = []
        self.size = 0
        self.sha256 = hashlib.sha256()

    async def _next(self) -> bytes | None:
        chunk = await anext(self._it, None)
        if chunk is None:
            return None
        self.size += len(chunk)
        if self.size > self._limit:
            raise PayloadTooLarge(self._limit)
        self.sha256.update(chunk)
        return chunk

    async def head(self, n: int) -> bytes:
        """At least ``n`` bytes from the start (fewer at the end of the stream), kept
        to be yielded again by :meth:`chunks`."""
        while sum(map(len, self._buffer)) < n:
            chunk = await self._next()
            if chunk is None:
                break
            self._buffer.append(chunk)
        return b"".join(self._buffer)[:n]

    async def chunks(self) -> AsyncIterator[bytes]:
        buffered, self._buffer = self._buffer, []
        for piece in buffered:
            yield piece
        while (chunk := await self._next()) is not None:
            yield chunk


class Extracted(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def word_count(self) -> int: ...


Extract = Callable[[bytes, str], Extracted]


class Library:
    """The files of every organisation: metadata in a FileStore, bytes in a BlobStore."""

    def __init__(
        self,
        files: FileStore,
        blobs: BlobStore,
        max_upload_bytes: int,
        extract: Extract | None = None,
        *,
        dispatch: FileHook | None = None,
    ) -> None:
        """``dispatch``: the job engine's :attr:`~copydesk.queue.Queue.file_hook`, which
        queues a stored or retried document for processing in the same transaction."""
        self._files = files
        self._dispatch = dispatch
        self._blobs = blobs
        self.max_upload_bytes = max_upload_bytes
        self._extract: Extract = extract or extraction.extract

    async def upload(
        self,
        org_id: str,
        filename: str,
        stream: AsyncIterable[bytes],
        *,
        declared_type: str | None = None,
        graph_id: str | None = None,
    ) -> StoredFile:
        """Store an upload read from ``stream``. ``declared_type`` (the request's
        Content-Type) is not used to decide anything: clients send wrong ones."""
        name = filename.strip()
        if not name:
            raise _bad("the file has no name (Content-Disposition filename)", "filename")
        reader = _Metered(stream, self.max_upload_bytes)
        ftype = detect_type(name, await reader.head(HEAD_BYTES))
        if declared_type and declared_type.split(";")[0].strip() != ftype.mime_type:
            log.debug("upload %r declared %s, stored as %s", name, declared_type, ftype.mime_type)
        file_id = str(uuid.uuid4())
        key = f"{file_id}.{ftype.extension}"
        await self._blobs.put(key, reader.chunks())
        new = NewFile(
            id=file_id,
            org_id=org_id,
            name=name,
            mime_type=ftype.mime_type,
            extension=ftype.extension,
            size_bytes=reader.size,
            sha256=reader.sha256.hexdigest(),
            storage_key=key,
            status="completed" if ftype.media else "in_progress",
            graph_ids=[graph_id] if graph_id else [],
        )
        try:
            return await self._files.create_file(new, self._dispatch)
        except BaseException:
            await asyncio.shield(self._blobs.delete(key))
            raise

    async def get(self, org_id: str, file_id: str) -> StoredFile:
        found = await self._files.get_file(org_id, file_id)
        if found is None:
            raise FileNotFound(file_id)
        return found

    async def page(
        self,
        org_id: str,
        cursor: CursorQuery,
        *,
        status: str | None = None,
        file_types: str | None = None,
        graph_id: str | None = None,
    ) -> CursorPage[StoredFile]:
        problems: list[Problem] = []
        if not 1 <= cursor.limit <= MAX_PAGE:
            problems.append(
                Problem(f"'limit' must be between 1 and {MAX_PAGE}", "limit", input="limit")
            )
        if status is not None and status not in STATUSES:
            problems.append(
                Problem(f"'status' must be one of {', '.join(STATUSES)}", "status", input="status")
            )
        if problems:
            raise InvalidRequest(problems)
        types = tuple(
            dict.fromkeys(
                t.strip().lstrip(".").lower() for t in (file_types or "").split(",") if t.strip()
            )
        )
        query = FileQuery(cursor=cursor, status=status, file_types=types, graph_id=graph_id)
        return await self._files.list_files(org_id, query)

    async def delete(self, org_id: str, file_id: str) -> StoredFile:
        removed = await self._files.delete_file(org_id, file_id)
        if removed is None:
            raise FileNotFound(file_id)
        await self._blobs.delete(removed.storage_key)
        return removed

    async def download(self, org_id: str, file_id: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        """The file and its bytes as a stream (the first chunk is read here, so a missing
        blob is a 404 before anything is answered)."""
        found = await self.get(org_id, file_id)
        chunks = self._blobs.open(found.storage_key)
        try:
            first = await anext(chunks, b"")
        except BlobNotFound as exc:
            raise FileNotFound(file_id) from exc

        async def stream() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()

        return found, stream()

    async def retry(self, org_id: str, file_ids: list[str]) -> list[StoredFile]:
        if not file_ids:
            raise _bad("'file_ids' must name at least one file", "fileIds")
        return await self._files.retry_files(org_id, file_ids, self._dispatch)

    # --- processing (workers) ------------------------------------------------------

    async def process_pending(
        self, limit: int = 4, lease_s: float = 300.0, idle_s: float = 0.0
    ) -> int:
        """Claim up to ``limit`` uploaded documents (with ``idle_s``, only those untouched
        that long) and extract their text; the number processed (0: nothing waiting)."""
        claimed = await self._files.claim_files(limit, lease_s, idle_s)
        for file in claimed:
            await self.process(file)
        return len(claimed)

    async def process_one(self, file_id: str, lease_s: float = 300.0) -> StoredFile | None:
        """Claim this uploaded document and extract its text (the job engine dispatched
        it); None when it no longer waits (processed, deleted, or held by another worker)."""
        claimed = await self._files.claim_file(file_id, lease_s)
        if claimed is None:
            return None
        return await self.process(claimed)

    async def process(self, file: StoredFile) -> StoredFile | None:
        try:
            data = await self._blobs.read(file.storage_key)
            extracted = await asyncio.to_thread(self._extract, data, file.extension)
        except asyncio.CancelledError:
            raise
        except BlobNotFound:
            return await self._files.set_processed(
                file.id, "failed", error="the file's stored bytes are missing"
            )
        except ExtractionFailed as exc:
            reason = exc.reason
        except Exception as exc:
            log.exception("file %s: unexpected error while extracting text", file.id)
            reason = f"unexpected {type(exc).__name__}: {exc}"
        else:
            return await self._files.set_processed(
                file.id, "completed", text=extracted.text, word_count=extracted.word_count
            )
        return await self._files.set_processed(
            file.id, "failed", error=f"could not extract text from {file.name!r}: {reason}"
        )
