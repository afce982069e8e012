"""F1 uploads of 200 MiB against a real ``copydesk serve``: the server's memory stays flat.

The server streams an upload to disk chunk by chunk (``_Metered`` counts it against
``max_upload_mb``, ``LocalBlobStore`` writes it to a temporary file), so its peak resident
memory must not grow with the size of the body, whether the body is refused (a declared
Content-Length over the limit; a chunked body that passes it) or stored.

Memory is read from ``/proc/<server pid>/status``: before each measured request the
server's peak (``VmHWM``) is reset to its current RSS by writing ``5`` to
``/proc/<pid>/clear_refs``, so the growth reported is ``VmHWM`` after the request minus
``VmRSS`` before it. (Where the reset is refused, the same difference still bounds the
growth from above, never from below.) The bodies come from generators, so this test
process never holds them either. Bounds are in MiB and generous against what is
measured (a few MiB); they catch a body being buffered whole, not allocator noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import select
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import CopydeskServer
from tests.e2e.test_applications_sdk import http_envelope

# The e2e tier (real server processes); each test moves 200 MiB through one of them.
pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
BODY_BYTES = 200 * MIB
DEFAULT_LIMIT_BYTES = 100 * MIB  # Settings.max_upload_mb's default
PIECE_BYTES = 256 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

REFUSED_GROWTH_MIB = 30
STORED_GROWTH_MIB = 60
ANSWER_WITHIN_S = 5.0


# --- the server's memory ---------------------------------------------------------------


def _status_kib(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])  # "123456 kB"
    return fields


class PeakMeter:
    """The growth of a process's peak RSS over a stretch of work, in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_before_kib = 0

    def start(self) -> None:
        # "5" resets VmHWM to the current RSS (Linux >= 4.0, own processes). Where it is
        # refused, VmHWM also holds earlier peaks: the growth below over-estimates.
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.rss_before_kib = _status_kib(self.pid)["VmRSS"]

    def growth_mib(self) -> float:
        return (_status_kib(self.pid)["VmHWM"] - self.rss_before_kib) / 1024

    def describe(self) -> str:
        now = _status_kib(self.pid)
        return (
            f"VmRSS before {self.rss_before_kib / 1024:.1f} MiB, VmHWM after "
            f"{now['VmHWM'] / 1024:.1f} MiB, VmRSS after {now['VmRSS'] / 1024:.1f} MiB"
        )


# --- bodies ------------------------------------------------------------------------------


def repeated(total: int, piece: bytes = b"a" * PIECE_BYTES) -> Iterator[bytes]:
    """``total`` bytes of text, one shared piece at a time."""
    left = total
    while left > 0:
        yield piece[:left]
        left -= len(piece)


def pseudo_random_png(total: int, seed: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """``total`` reproducible bytes that start like a PNG; ``digest`` sees each one."""
    rng = random.Random(seed)
    first = True
    left = total
    while left > 0:
        size = min(MIB, left)
        piece = PNG_MAGIC + rng.randbytes(size - len(PNG_MAGIC)) if first else rng.randbytes(size)
        first = False
        digest.update(piece)
        yield piece
        left -= size


# --- a raw client that stops sending once it is answered -----------------------------------


@dataclass
class RawAnswer:
    response: httpx.Response
    sent: int  # body bytes handed to the socket before the answer was seen
    seconds: float  # from the request's first byte to the answer's head


def _answered(sock: socket.socket) -> bool:
    """Whether the server has said something (or closed): readable without waiting."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _read_answer(sock: socket.socket, url: str) -> tuple[httpx.Response, float]:
    received = b""
    while b"\r\n\r\n" not in received:
        part = sock.recv(65536)
        assert part, f"the server closed the connection without an answer: {received!r}"
        received += part
    answered_at = time.monotonic()
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    pairs = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in header_lines)]
    length = int({n.lower(): v for n, v in pairs}.get("content-length", "0"))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    response = httpx.Response(
        int(status_line.split(" ", 2)[1]),
        headers=pairs,
        content=body[:length],
        request=httpx.Request("POST", url),
    )
    return response, answered_at


def raw_upload(
    server: CopydeskServer, filename: str, body: Iterable[bytes], *, length: int | None
) -> RawAnswer:
    """POST /v1/files with ``body`` sent piece by piece: with ``Content-Length: length``,
    or chunked when ``length`` is None. Sending stops as soon as an answer arrives (the
    server may refuse before it has read everything) or the server closes the socket."""
    parts = urlsplit(server.url)
    lines = [
        "POST /v1/files HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Authorization: Bearer {server.key}",
        f"Content-Disposition: attachment; filename={filename}",
        "Content-Type: application/octet-stream",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 30) as sock:
        started = time.monotonic()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent = 0
        try:
            for piece in body:
                if _answered(sock):
                    break
                sock.sendall(piece if length is not None else b"%x\r\n%b\r\n" % (len(piece), piece))
                sent += len(piece)
            else:
                if length is None:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed early: its answer may still be waiting in our receive buffer
        response, answered_at = _read_answer(sock, f"{server.url}/v1/files")
    return RawAnswer(response, sent, answered_at - started)


def warm_up(server: CopydeskServer) -> None:
    """The code paths of an upload, run once before measuring (lazy imports, first
    database use, the first thread of the pool), storing nothing."""
    assert server.http("GET", "/v1/files").status_code == 200
    refused = server.http(
        "POST",
        "/v1/files",
        content=b"MZ" + b"\0" * 8192,
        headers={"Content-Disposition": "attachment; filename=tool.exe"},
    )
    assert refused.status_code == 400, refused.text


def stored_blobs(server: CopydeskServer) -> list[Path]:
    """Every file under the server's blob folder (temporary uploads included)."""
    root = server.data_dir / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- refused uploads ----------------------------------------------------------------------


def test_declared_length_over_the_limit_is_refused_before_reading(
    server: CopydeskServer,
) -> None:
    warm_up(server)
    meter = PeakMeter(server.pid)
    meter.start()
    answer = raw_upload(server, "big.txt", repeated(BODY_BYTES), length=BODY_BYTES)
    growth = meter.growth_mib()

    http_envelope(answer.response, 413, "PayloadTooLarge")
    assert answer.seconds < ANSWER_WITHIN_S, f"answered after {answer.seconds:.2f}s"
    # Only what socket buffers hold was sent before the answer came back.
    assert answer.sent < 32 * MIB, f"{answer.sent / MIB:.1f} MiB were sent before the answer"
    assert growth < REFUSED_GROWTH_MIB, (
        f"a refused 200 MiB upload grew the server's peak RSS by {growth:.1f} MiB "
        f"(bound {REFUSED_GROWTH_MIB} MiB; {meter.describe()})"
    )
    print(
        f"\n[declared 200 MiB, limit 100 MiB] peak RSS growth {growth:.1f} MiB, "
        f"answered in {answer.seconds:.3f}s after {answer.sent / MIB:.1f} MiB sent"
    )


def test_chunked_body_past_the_limit_is_refused_and_leaves_nothing(
    server: CopydeskServer,
) -> None:
    warm_up(server)
    meter = PeakMeter(server.pid)
    meter.start()
    answer = raw_upload(server, "big.txt", repeated(BODY_BYTES), length=None)
    growth = meter.growth_mib()

    http_envelope(answer.response, 413, "PayloadTooLarge")
    # Refused once the limit was passed, not before, and long before the 200 MiB.
    assert DEFAULT_LIMIT_BYTES < answer.sent < DEFAULT_LIMIT_BYTES + 32 * MIB, (
        f"{answer.sent / MIB:.1f} MiB were sent before the answer"
    )
    assert growth < REFUSED_GROWTH_MIB, (
        f"a chunked upload refused at 100 MiB grew the server's peak RSS by {growth:.1f} "
        f"MiB (bound {REFUSED_GROWTH_MIB} MiB; {meter.describe()})"
    )
    listed = server.http("GET", "/v1/files")
    assert listed.json()["data"] == [], listed.text
    assert stored_blobs(server) == []
    print(
        f"\n[chunked 200 MiB, limit 100 MiB] peak RSS growth {growth:.1f} MiB, "
        f"answered in {answer.seconds:.3f}s after {answer.sent / MIB:.1f} MiB sent"
    )


# --- a stored upload ------------------------------------------------------------------------


def test_200_mib_upload_under_a_raised_limit_is_stored_byte_for_byte(
    launch: Callable[..., CopydeskServer],
) -> None:
    """A 250 MiB limit takes a 200 MiB upload; it is stored and downloads identical.

    The file is a ``.png`` (a PNG signature, then reproducible pseudo-random bytes): the
    upload path is the same for every type (the type is decided from the first 4 KiB),
    but an image is "media", completed on upload, which the in-process worker never reads
    back. A document would be extracted right after the upload, and extraction reads the
    whole blob into memory (``Library.process``), which would land in the same ``VmHWM``
    and make it say nothing about the upload. The peak is read as soon as the response
    has come; the download is measured on its own, after a reset.
    """
    server = launch(env={"COPYDESK_MAX_UPLOAD_MB": "250"})
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60
    ) as http:

        def upload(name: str, body: Iterable[bytes], length: int) -> httpx.Response:
            return http.post(
                "/v1/files",
                content=body,
                headers={
                    "Content-Disposition": f"attachment; filename={name}",
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                },
            )

        warm = upload("warm.png", pseudo_random_png(64 * 1024, 1, hashlib.sha256()), 64 * 1024)
        assert warm.status_code == 200, warm.text

        sent = hashlib.sha256()
        meter = PeakMeter(server.pid)
        meter.start()
        started = time.monotonic()
        response = upload("big.png", pseudo_random_png(BODY_BYTES, 200, sent), BODY_BYTES)
        upload_growth = meter.growth_mib()
        upload_s = time.monotonic() - started
        assert response.status_code == 200, response.text
        stored = response.json()
        assert stored["size_bytes"] == BODY_BYTES
        assert stored["mime_type"] == "image/png"
        assert stored["status"] == "completed"
        assert upload_growth < STORED_GROWTH_MIB, (
            f"a stored 200 MiB upload grew the server's peak RSS by {upload_growth:.1f} MiB "
            f"(bound {STORED_GROWTH_MIB} MiB; {meter.describe()})"
        )

        received = hashlib.sha256()
        size = 0
        meter.start()
        with http.stream("GET", f"/v1/files/{stored['id']}/download") as download:
            assert download.status_code == 200
            for piece in download.iter_bytes():
                received.update(piece)
                size += len(piece)
        download_growth = meter.growth_mib()
    assert size == BODY_BYTES
    assert received.hexdigest() == sent.hexdigest()
    assert download_growth < STORED_GROWTH_MIB, (
        f"downloading 200 MiB grew the server's peak RSS by {download_growth:.1f} MiB "
        f"(bound {STORED_GROWTH_MIB} MiB; {meter.describe()})"
    )
    blobs = {p.name: p.stat().st_size for p in stored_blobs(server)}
    assert blobs.get(f"{stored['id']}.png") == BODY_BYTES, blobs
    print(
        f"\n[stored 200 MiB, limit 250 MiB] upload {upload_s:.2f}s, peak RSS growth "
        f"{upload_growth:.1f} MiB; download peak RSS growth {download_growth:.1f} MiB"
    )
