"""Bearer-key authentication as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from copydesk.errors import Unauthenticated
from copydesk.store import Organization


async def current_org(request: Request) -> Organization:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing 'Authorization: Bearer <api key>' header")
    app = request.app.state.copydesk
    org: Organization = await app.accounts.authenticate(token.strip())
    return org


Org = Annotated[Organization, Depends(current_org)]
