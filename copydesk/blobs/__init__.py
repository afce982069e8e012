"""Blob stores: where uploaded files' bytes live. The ``BlobStore`` port and its adapters.

Bytes always move as async chunk streams, so no file is ever held whole in memory.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import Protocol


class BlobNotFound(Exception):
    """No blob under the key (it was deleted, or never written)."""


class BlobStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the stream under ``key`` (all or nothing); the number of bytes written.
        If the stream raises, nothing is left under ``key`` and the error propagates."""
        ...

    def open(self, key: str, chunk_size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
        """The blob's bytes in chunks; raises BlobNotFound on first use if missing."""
        ...

    async def read(self, key: str) -> bytes:
        """The whole blob (for the worker's text extraction)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing key is not an error."""
        ...
