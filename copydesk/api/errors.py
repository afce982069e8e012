"""Translation of errors into Writer's error envelope, the only place HTTP statuses are chosen."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from copydesk import errors as e
from copydesk.prompts import PromptRenderError

log = logging.getLogger("copydesk.api")

TPE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
KEY_STATUS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    405: "methodNotAllowed",
    409: "conflict",
    413: "payloadTooLarge",
    415: "unsupportedMediaType",
    422: "unprocessableEntity",
    429: "tooManyRequests",
    500: "internalServerError",
    502: "badGateway",
    503: "serviceUnavailable",
    504: "gatewayTimeout",
}
#: 4xx answers that a retry of the same request cannot fix.
NOT_RETRYABLE = {400, 401, 403, 404, 405, 409, 413, 415, 422}


def envelope(
    status: int, items: list[dict[str, Any]], extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"tpe": TPE.get(status, "Error"), "errors": items, "extras": extras or {}}


def item(
    status: int, description: str, detail: str, extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "description": description,
        "key": f"fail.{KEY_STATUS.get(status, 'error')}.{detail}",
        "extras": extras or {},
    }


def error_response(
    status: int,
    items: list[dict[str, Any]],
    *,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    out = dict(headers or {})
    if status in NOT_RETRYABLE:
        out.setdefault("x-should-retry", "false")
    if status in (429, 503):
        seconds = max(1, round(retry_after_s if retry_after_s is not None else 1))
        out["retry-after"] = str(seconds)
    return JSONResponse(envelope(status, items), status_code=status, headers=out)


def describe(exc: e.CopydeskError) -> tuple[int, list[dict[str, Any]], float | None]:
    """Status, envelope items and retry-after for one of our errors."""
    match exc:
        case e.InvalidRequest(problems=problems):
            key = "invalidInputs" if isinstance(exc, e.InvalidInputs) else "invalidParameters"
            return (
                400,
                [
                    item(
                        400,
                        p.description,
                        f"{key}.{p.rule}",
                        {**({"input": p.input} if p.input else {}), "rule": p.rule, **p.extras},
                    )
                    for p in problems
                ],
                None,
            )
        case e.NotFound():
            return 404, [item(404, exc.message, "resource", {"resource": exc.resource})], None
        case e.JobNotRetryable():
            return 400, [item(400, exc.message, "jobNotRetryable", {"status": exc.status})], None
        case e.BatchNotRetryable():
            return 400, [item(400, exc.message, "batchNotRetryable", {"status": exc.status})], None
        case e.FileNotRetryable():
            return 400, [item(400, exc.message, "fileNotRetryable", {"status": exc.status})], None
        case e.IdempotencyKeyReused():
            return 409, [item(409, exc.message, "idempotencyKeyReused", {"key": exc.key})], None
        case e.IdempotencyKeyInProgress():
            return 409, [item(409, exc.message, "idempotencyKeyInProgress", {"key": exc.key})], None
        case e.PayloadTooLarge():
            return (
                413,
                [item(413, exc.message, "fileTooLarge", {"limit_bytes": exc.limit_bytes})],
                None,
            )
        case e.Unauthenticated():
            return 401, [item(401, exc.message, "badToken")], None
        case e.AgentDefinitionInvalid():
            return 400, [item(400, p, "invalidDefinition") for p in exc.problems], None
        case PromptRenderError():
            return 400, [item(400, exc.message, "promptRender")], None
        case e.ProviderRateLimited():
            return 429, [item(429, exc.message, "providerRateLimited")], exc.retry_after_s
        case e.ProviderUnavailable():
            return 503, [item(503, exc.message, "providerUnavailable")], exc.retry_after_s
        case e.ProviderTimeout():
            return 504, [item(504, exc.message, "providerTimeout")], None
        case e.ProviderRejected():
            return 400, [item(400, exc.message, "providerRejected")], None
        case _:
            log.error("unhandled Copydesk error: %s", exc, exc_info=exc)
            return 500, [item(500, exc.message, "generic")], None


def install(api: FastAPI) -> None:
    @api.exception_handler(e.CopydeskError)
    async def _copydesk(_request: Request, exc: e.CopydeskError) -> JSONResponse:
        status, items, retry_after = describe(exc)
        # The first request with this key may still finish: trying again later can help.
        headers = (
            {"x-should-retry": "true", "retry-after": "1"}
            if isinstance(exc, e.IdempotencyKeyInProgress)
            else None
        )
        return error_response(status, items, retry_after_s=retry_after, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Body problems are bad requests (Writer answers 400 for bad inputs); malformed
        # query or path parameters are 422.
        errs = exc.errors()
        in_body = any(err.get("loc", ("",))[0] == "body" for err in errs)
        status = 400 if in_body else 422
        items = [
            item(
                status,
                f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}",
                "invalidParameters",
                {"loc": [str(p) for p in err.get("loc", ())]},
            )
            for err in errs
        ]
        return error_response(status, items)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if status == 404:
            detail = "no such route; see /docs for the API"
        return error_response(
            status, [item(status, detail, "route")], headers=dict(exc.headers or {})
        )

    @api.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, [item(500, "internal server error", "generic")])
