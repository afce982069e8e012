"""The API benchmark's denominator: a bare Starlette app returning a fixed JSON, served the
way ``copydesk serve`` serves (uvicorn, httptools, uvloop, one process, no access log, the
same keep-alive). It has the same two routes as the measured ones, so one load script
drives both; POST reads its body (a real server must) and ignores it.

    python -m bench.bare_app        # prints BARE_LISTENING http://127.0.0.1:PORT
"""

from __future__ import annotations

import socket
from typing import Any

LISTENING = "BARE_LISTENING"
#: About the size of the job object ``GET /v1/applications/jobs/{id}`` answers.
FIXED: dict[str, Any] = {
    "id": "00000000-0000-4000-8000-000000000000",
    "status": "in_progress",
    "application_id": "2b8d4f6a-1c3e-4a5b-8d7f-9e0a1b2c3d4e",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "completed_at": None,
    "data": None,
    "error": None,
}


def app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def create(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(FIXED, status_code=202)

    async def retrieve(request: Request) -> JSONResponse:
        return JSONResponse(FIXED)

    return Starlette(
        routes=[
            Route("/v1/applications/jobs/{job_id}", retrieve, methods=["GET"]),
            Route("/v1/applications/{application_id}/jobs", create, methods=["POST"]),
        ]
    )


def main() -> None:
    import uvicorn
    import uvloop

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(
        app(),
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=65,  # as `copydesk serve`
    )
    print(f"{LISTENING} http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
