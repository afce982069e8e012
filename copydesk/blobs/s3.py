"""Blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...).

Uploads stream: the chunks are gathered into parts of ``part_size`` bytes and sent as a
multipart upload, so at most one part (plus one incoming chunk) is held in memory. A stream
shorter than one part is sent with a single PutObject. If the stream (or S3) fails
half-way, the multipart upload is aborted: an object only appears under its key once
complete, so nothing is left behind. The client is made on first use (or by
``connect()``) and closed by ``close()``; importing this module connects to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from copydesk.blobs import BlobNotFound

log = logging.getLogger("copydesk.blobs.s3")

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part, except the last one
DEFAULT_PART_SIZE = 8 * MiB

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _is_missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in _MISSING


class S3BlobStore:
    """The ``BlobStore`` port on one bucket, keys under an optional ``prefix``.

    Credentials left ``None`` come from the standard AWS chain (``AWS_*`` variables,
    shared config files, instance or container roles). With an ``endpoint_url`` (MinIO
    and other S3-compatible servers) path-style addressing is used.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if not bucket:
            raise ValueError("S3BlobStore needs a bucket name")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self._credentials = {
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "aws_session_token": session_token,
        }
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    def _key(self, key: str) -> str:
        if not _KEY.fullmatch(key) or ".." in key:
            raise ValueError(f"invalid blob key {key!r}")
        return self.prefix + key

    # --- lifecycle ----------------------------------------------------------------

    async def connect(self) -> None:
        """Make the client (no request is sent); idempotent. Operations call it too."""
        await self._s3()

    async def close(self) -> None:
        """Close the client and its connection pool; the next operation makes a new one."""
        async with self._lock:
            stack, self._stack, self._client = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                config = AioConfig(
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3},
                    # Many S3-compatible servers reject the CRC checksums botocore now
                    # sends by default; send and check them only where S3 requires them.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    s3={"addressing_style": "path" if self.endpoint_url else "auto"},
                )
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=config,
                        **self._credentials,
                    )
                )
                self._stack = stack
            return self._client

    # --- the BlobStore port -------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        name = self._key(key)
        s3 = await self._s3()
        buffer = bytearray()
        written = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part(data: bytes) -> None:
            number = len(parts) + 1
            reply = await s3.upload_part(
                Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"ETag": reply["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                buffer += chunk
                written += len(chunk)
                # Strictly more than a part: the last part is never empty, and a stream of
                # exactly one part still goes as a single PutObject.
                while len(buffer) > self.part_size:
                    if upload_id is None:
                        created = await s3.create_multipart_upload(Bucket=self.bucket, Key=name)
                        upload_id = str(created["UploadId"])
                    data = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    await send_part(data)
            if upload_id is None:
                await s3.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer))
            else:
                await send_part(bytes(buffer))
                buffer.clear()
                await s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                await asyncio.shield(self._abort(name, upload_id))
            raise
        return written

    async def _abort(self, name: str, upload_id: str) -> None:
        try:
            await (await self._s3()).abort_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id
            )
        except Exception:
            # The upload's parts stay until a bucket lifecycle rule removes them; the
            # object itself was never created.
            log.warning(
                "could not abort multipart upload %s of s3://%s/%s",
                upload_id,
                self.bucket,
                name,
                exc_info=True,
            )

    async def open(self, key: str, chunk_size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
        name = self._key(key)
        s3 = await self._s3()
        try:
            reply = await s3.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _is_missing(exc):
                raise BlobNotFound(key) from exc
            raise
        async with reply["Body"] as body:
            while chunk := await body.read(chunk_size):
                yield chunk

    async def read(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.open(key, chunk_size=1024 * 1024)])

    async def delete(self, key: str) -> None:
        name = self._key(key)
        s3 = await self._s3()
        try:
            await s3.delete_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if not _is_missing(exc):
                raise
