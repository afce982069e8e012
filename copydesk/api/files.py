"""Routes F1-F6: thin handlers over the file library.

F1's body is the file's raw bytes (not multipart), named by ``Content-Disposition``; it
is read chunk by chunk into the library, which enforces the size limit as it reads.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from copydesk.api import schemas
from copydesk.api.auth import Org
from copydesk.api.idempotency import Idempotent
from copydesk.app import App
from copydesk.errors import InvalidRequest, PayloadTooLarge, Problem
from copydesk.store import CursorQuery

router = APIRouter(prefix="/v1/files", tags=["files"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorObject} for code in (400, 401, 404, 413, 422, 500)
}

# One parameter of a Content-Disposition header: name=token, name="quoted", name='quoted'.
_PARAM = re.compile(
    r""";\s*(?P<name>[A-Za-z0-9!#$&+.^_`|~*-]+)\s*=\s*"""
    r"""(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>[^']*)'|(?P<token>[^;]*))""",
)


def filename_from_disposition(header: str | None) -> str | None:
    """The file name in a Content-Disposition header, or None when it has none usable.

    Accepts ``filename=x.pdf``, ``filename="x y.pdf"``, ``filename='x.pdf'`` and RFC 5987
    ``filename*=UTF-8''na%C3%AFve.pdf`` (which wins when both are given). Any folder part
    is dropped.
    """
    if not header:
        return None
    plain: str | None = None
    extended: str | None = None
    for match in _PARAM.finditer(";" + header.split(";", 1)[1] if ";" in header else ""):
        name = match.group("name").lower()
        if match.group("dq") is not None:
            value = re.sub(r"\\(.)", r"\1", match.group("dq"))
        elif match.group("sq") is not None:
            value = match.group("sq")
        else:
            value = (match.group("token") or "").strip()
        if name == "filename":
            plain = _utf8(value)
        elif name == "filename*":
            extended = _rfc5987(value)
    chosen = extended if extended else plain
    if chosen is None:
        return None
    chosen = chosen.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return chosen if chosen and chosen not in (".", "..") else None


def _utf8(value: str) -> str:
    """Header values arrive decoded as Latin-1; a raw UTF-8 name is decoded as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _rfc5987(value: str) -> str | None:
    charset, sep, rest = value.strip().strip('"').partition("'")
    if not sep:
        return None
    _language, sep, encoded = rest.partition("'")
    if not sep:
        return None
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None


def _app(request: Request) -> App:
    app: App = request.app.state.copydesk
    return app


@router.post("", response_model=schemas.FileObject, responses=ERRORS)
async def upload_file(
    request: Request,
    org: Org,
    idem: Idempotent,
    graph_id: Annotated[
        str | None, Query(alias="graphId", description="a Knowledge Graph to add it to")
    ] = None,
) -> schemas.FileObject | JSONResponse:
    library = _app(request).library
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > library.max_upload_bytes:
        raise PayloadTooLarge(library.max_upload_bytes)  # answered before reading the body
    filename = filename_from_disposition(request.headers.get("content-disposition"))
    if filename is None:
        raise InvalidRequest(
            [
                Problem(
                    "a file name is needed: send 'Content-Disposition: attachment; "
                    "filename=NAME.EXT'",
                    "filename",
                    input="Content-Disposition",
                )
            ]
        )
    if idem.key is None:
        stored = await library.upload(
            org.id,
            filename,
            request.stream(),
            declared_type=request.headers.get("content-type"),
            graph_id=graph_id,
        )
        return schemas.file_object(stored, uploaded=True)

    async def upload() -> tuple[JSONResponse, str]:
        stored = await library.upload(
            org.id,
            filename,
            request.stream(),
            declared_type=request.headers.get("content-type"),
            graph_id=graph_id,
        )
        body = schemas.file_object(stored, uploaded=True).model_dump(mode="json")
        return JSONResponse(body), stored.sha256

    # The body's hash is known once it is stored; the file name is part of the request.
    return await idem.respond_streamed(upload, library.max_upload_bytes, filename)


@router.post("/retry", response_model=schemas.FileRetried, responses=ERRORS)
async def retry_files(
    request: Request, org: Org, body: schemas.FileRetryRequest
) -> schemas.FileRetried:
    await _app(request).library.retry(org.id, body.file_ids)
    return schemas.FileRetried(success=True)


@router.get("", response_model=schemas.FileList, responses=ERRORS)
async def list_files(
    request: Request,
    org: Org,
    order: Literal["asc", "desc"] = "desc",
    before: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(description="page size, 1 to 100")] = 50,
    status: Annotated[str | None, Query(description="in_progress, completed or failed")] = None,
    file_types: Annotated[
        str | None, Query(description="comma-separated extensions, e.g. pdf,txt")
    ] = None,
    graph_id: str | None = None,
) -> schemas.FileList:
    page = await _app(request).library.page(
        org.id,
        CursorQuery(limit=limit, order=order, after=after, before=before),
        status=status,
        file_types=file_types,
        graph_id=graph_id,
    )
    data = [schemas.file_object(f) for f in page.items]
    return schemas.FileList(
        data=data,
        has_more=page.has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{file_id}", response_model=schemas.FileObject, responses=ERRORS)
async def retrieve_file(request: Request, org: Org, file_id: str) -> schemas.FileObject:
    return schemas.file_object(await _app(request).library.get(org.id, file_id))


@router.delete("/{file_id}", response_model=schemas.FileDeleted, responses=ERRORS)
async def delete_file(request: Request, org: Org, file_id: str) -> schemas.FileDeleted:
    removed = await _app(request).library.delete(org.id, file_id)
    return schemas.FileDeleted(id=removed.id, deleted=True)


@router.get(
    "/{file_id}/download",
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}}},
    response_class=StreamingResponse,
)
async def download_file(request: Request, org: Org, file_id: str) -> StreamingResponse:
    file, chunks = await _app(request).library.download(org.id, file_id)
    return StreamingResponse(
        chunks,
        media_type=file.mime_type,
        headers={"content-length": str(file.size_bytes)},
    )
