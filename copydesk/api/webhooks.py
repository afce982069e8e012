"""Webhook endpoints (a Copydesk extension): register, list, read, delete, the delivery log,
redelivery. Thin handlers over :class:`copydesk.subscriptions.Subscriptions`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from copydesk.api import schemas
from copydesk.api.auth import Org
from copydesk.subscriptions import Subscriptions
from copydesk.webhooks import Delivery, Endpoint, EventType

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorObject} for code in (400, 401, 404, 422, 500)
}


class EndpointCreateRequest(BaseModel):
    url: str = Field(description="http(s) URL that receives the signed POSTs")
    events: list[EventType] = Field(min_length=1)
    description: str | None = Field(default=None, max_length=500)


class EndpointObject(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


class EndpointCreated(EndpointObject):
    secret: str = Field(
        description="the signing secret (whsec_...); shown only in this answer, keep it"
    )


class EndpointList(BaseModel):
    data: list[EndpointObject]


class DeliveryObject(BaseModel):
    id: str
    event_id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: str
    endpoint_id: str
    status: str = Field(description="pending, delivered or failed")
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryList(BaseModel):
    data: list[DeliveryObject]


def _subscriptions(request: Request) -> Subscriptions:
    subscriptions: Subscriptions = request.app.state.copydesk.subscriptions
    return subscriptions


def _endpoint(endpoint: Endpoint) -> EndpointObject:
    return EndpointObject(
        id=endpoint.id,
        url=endpoint.url,
        events=endpoint.events,
        description=endpoint.description,
        created_at=endpoint.created_at,
    )


def _delivery(d: Delivery) -> DeliveryObject:
    return DeliveryObject(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        endpoint_id=d.endpoint_id,
        status=d.status,
        attempts=d.attempts,
        last_status=d.last_status,
        last_error=d.last_error,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        delivered_at=d.delivered_at,
        created_at=d.created_at,
    )


@router.post("", status_code=201, response_model=EndpointCreated, responses=ERRORS)
async def create_webhook(
    request: Request, org: Org, body: EndpointCreateRequest
) -> EndpointCreated:
    endpoint = await _subscriptions(request).register(
        org.id, body.url, body.events, body.description
    )
    return EndpointCreated(**_endpoint(endpoint).model_dump(), secret=endpoint.secret)


@router.get("", response_model=EndpointList, responses=ERRORS)
async def list_webhooks(request: Request, org: Org) -> EndpointList:
    return EndpointList(
        data=[_endpoint(e) for e in await _subscriptions(request).endpoints(org.id)]
    )


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryObject,
    responses=ERRORS,
)
async def redeliver(request: Request, org: Org, delivery_id: str) -> DeliveryObject:
    return _delivery(await _subscriptions(request).redeliver(org.id, delivery_id))


@router.get("/{webhook_id}", response_model=EndpointObject, responses=ERRORS)
async def retrieve_webhook(request: Request, org: Org, webhook_id: str) -> EndpointObject:
    return _endpoint(await _subscriptions(request).get(org.id, webhook_id))


@router.delete("/{webhook_id}", status_code=204, responses=ERRORS)
async def delete_webhook(request: Request, org: Org, webhook_id: str) -> Response:
    await _subscriptions(request).delete(org.id, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList, responses=ERRORS)
async def list_deliveries(
    request: Request,
    org: Org,
    webhook_id: str,
    limit: Annotated[int, Query(description="newest first; default 50, at most 500")] = 50,
) -> DeliveryList:
    found = await _subscriptions(request).deliveries(org.id, webhook_id, limit)
    return DeliveryList(data=[_delivery(d) for d in found])
