"""REST API v1 for webhook endpoints: subscribe, change, test, rotate secrets, list attempts, replay.

A URL is checked when it is stored (it must resolve to public addresses only, unless
POSTROOM_WEBHOOK_ALLOWED_NETWORKS allows more) and again by the webhooks stage at every dial.
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, g, jsonify

from common import dispatch
from common.config import settings
from common.db.connection import transaction
from common.netguard import BlockedAddress, parse_networks, vet_url
from services.ingest import endpoints
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.models import (
    Count,
    DeliveryAttempts,
    DeliveryQueued,
    NewWebhookEndpoint,
    ReplaySince,
    SecretRotated,
    WebhookEndpointChange,
    WebhookEndpointList,
    WebhookEndpointView,
)
from services.ingest.validation import query_int

webhook_api = Blueprint("webhook_endpoints", __name__, url_prefix="/v1")
MAX_PAGE = 200


def _check_url(url: str) -> None:
    try:
        vet_url(url, parse_networks(settings.postroom_webhook_allowed_networks))
    except BlockedAddress as exc:
        raise ApiError(422, "invalid_request", f"url is refused: {exc}", "url") from None
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"url: {exc}", "url") from None


def _missing(endpoint_id: int) -> ApiError:
    return ApiError(404, "not_found", f"no webhook endpoint {endpoint_id} in this workspace")


def _require_enabled(endpoint_id: int) -> None:
    """Inside the request's transaction: 404 without the endpoint, 409 while it is disabled."""
    enabled = endpoints.is_enabled(g.workspace_id, endpoint_id)
    if enabled is None:
        raise _missing(endpoint_id)
    if not enabled:
        raise ApiError(409, "endpoint_disabled", f"webhook endpoint {endpoint_id} is disabled; enable it first "
                       '(PATCH {"enabled": true})')


def _kick(endpoint_id: int) -> None:
    """Hand the endpoint to the webhooks stage, after the commit (the scheduler covers a lost kick)."""
    dispatch.handoff.submit("webhooks", "urgent", [endpoint_id])


@operation(webhook_api, "POST", "/webhook-endpoints", summary="Subscribe an endpoint to events", scope="webhooks:write",
           request=NewWebhookEndpoint, ok={201: Body(WebhookEndpointView, "Created; `secret` is shown this once.")})
def create_endpoint(body: NewWebhookEndpoint) -> tuple[Response, int]:
    _check_url(body.url)
    with transaction():
        created = endpoints.create(g.workspace_id, body.model_dump())
    return jsonify(created), 201


@operation(webhook_api, "GET", "/webhook-endpoints", summary="List the workspace's webhook endpoints", scope="webhooks:read",
           ok={200: Body(WebhookEndpointList, "Every endpoint, oldest first (secrets are never shown).")})
def list_endpoints() -> tuple[Response, int]:
    with transaction():
        found = endpoints.listing(g.workspace_id)
    return jsonify({"endpoints": found}), 200


@operation(webhook_api, "GET", "/webhook-endpoints/{endpoint_id}", summary="Read a webhook endpoint", scope="webhooks:read",
           ok={200: Body(WebhookEndpointView, "The endpoint.")}, errors=(404,))
def get_endpoint(endpoint_id: int) -> tuple[Response, int]:
    with transaction():
        found = endpoints.get(g.workspace_id, endpoint_id)
    if found is None:
        raise _missing(endpoint_id)
    return jsonify(found), 200


@operation(webhook_api, "PATCH", "/webhook-endpoints/{endpoint_id}", summary="Change a webhook endpoint", scope="webhooks:write",
           request=WebhookEndpointChange, ok={200: Body(WebhookEndpointView, "The changed endpoint.")}, errors=(404,))
def change_endpoint(endpoint_id: int, body: WebhookEndpointChange) -> tuple[Response, int]:
    fields = body.model_dump(exclude_none=True)
    if "url" in fields:
        _check_url(fields["url"])
    with transaction():
        changed = endpoints.change(g.workspace_id, endpoint_id, fields)
    if changed is None:
        raise _missing(endpoint_id)
    if fields.get("enabled"):
        _kick(endpoint_id)  # deliveries queued while it was disabled
    return jsonify(changed), 200


@operation(webhook_api, "DELETE", "/webhook-endpoints/{endpoint_id}", summary="Delete a webhook endpoint and its delivery log",
           scope="webhooks:write", ok={200: Body(WebhookEndpointView, "The endpoint as it was.")}, errors=(404,))
def delete_endpoint(endpoint_id: int) -> tuple[Response, int]:
    with transaction():
        deleted = endpoints.delete(g.workspace_id, endpoint_id)
    if deleted is None:
        raise _missing(endpoint_id)
    return jsonify(deleted), 200


@operation(webhook_api, "POST", "/webhook-endpoints/{endpoint_id}/rotate-secret", summary="Rotate an endpoint's signing secret",
           scope="webhooks:write", ok={200: Body(SecretRotated, "The new secret, shown once; both sign for 24 hours.")},
           errors=(404,))
def rotate_secret(endpoint_id: int) -> tuple[Response, int]:
    with transaction():
        rotated = endpoints.rotate_secret(g.workspace_id, endpoint_id)
    if rotated is None:
        raise _missing(endpoint_id)
    return jsonify(rotated), 200


@operation(webhook_api, "POST", "/webhook-endpoints/{endpoint_id}/test", summary="Send a test event to an endpoint",
           scope="webhooks:write", ok={202: Body(DeliveryQueued, "Queued: see the endpoint's deliveries for the outcome.")},
           errors=(404, 409))
def test_endpoint(endpoint_id: int) -> tuple[Response, int]:
    with transaction():
        _require_enabled(endpoint_id)
        queued = endpoints.queue_test(g.workspace_id, endpoint_id)
    if queued is None:
        raise _missing(endpoint_id)
    _kick(endpoint_id)
    return jsonify(queued), 202


@operation(webhook_api, "GET", "/webhook-endpoints/{endpoint_id}/deliveries", summary="List delivery attempts to an endpoint",
           scope="webhooks:read", ok={200: Body(DeliveryAttempts, "Attempts, newest first.")}, errors=(404, 422),
           headers=[query("limit", f"Attempts per page, 1 to {MAX_PAGE} (default 50).", type="integer", minimum=1, maximum=MAX_PAGE),
                    query("before", "Only attempts older than this attempt id (the previous page's `next_before`).",
                          type="integer", minimum=1, maximum=2**63 - 1)])
def list_deliveries(endpoint_id: int) -> tuple[Response, int]:
    limit = query_int("limit", 50, 1, MAX_PAGE)
    before = query_int("before", None, 1, 2**63 - 1)
    with transaction():
        found = endpoints.attempts(g.workspace_id, endpoint_id, limit, before)
    if found is None:
        raise _missing(endpoint_id)
    return jsonify({"attempts": found, "next_before": found[-1]["attempt_id"] if len(found) == limit else None}), 200


@operation(webhook_api, "POST", "/webhook-endpoints/{endpoint_id}/replay", summary="Send an endpoint's events again since a time",
           scope="webhooks:write", request=ReplaySince, ok={202: Body(Count, "How many events were queued again.")}, errors=(404, 409))
def replay_endpoint(endpoint_id: int, body: ReplaySince) -> tuple[Response, int]:
    try:
        since = datetime.fromisoformat(body.since.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid_request", "since must be an RFC 3339 time, e.g. 2026-11-30T12:00:00Z", "since") from None
    if since.tzinfo is None:
        raise ApiError(422, "invalid_request", "since needs a UTC offset, e.g. 2026-11-30T12:00:00Z", "since")
    with transaction():
        _require_enabled(endpoint_id)
        count = endpoints.replay_since(g.workspace_id, endpoint_id, since)
    if count is None:
        raise _missing(endpoint_id)
    if count:
        _kick(endpoint_id)
    return jsonify({"count": count}), 202


@operation(webhook_api, "POST", "/webhook-deliveries/{delivery_id}/replay", summary="Send one delivery's event again",
           scope="webhooks:write", ok={202: Body(DeliveryQueued, "Queued again, with the same webhook-id.")}, errors=(404, 409))
def replay_delivery(delivery_id: int) -> tuple[Response, int]:
    with transaction():
        endpoint_id = endpoints.endpoint_of(g.workspace_id, delivery_id)
        if endpoint_id is None:
            raise ApiError(404, "not_found", f"no webhook delivery {delivery_id} in this workspace")
        _require_enabled(endpoint_id)
        queued = endpoints.replay_delivery(g.workspace_id, delivery_id)
    if queued is None:
        raise ApiError(404, "not_found", f"no webhook delivery {delivery_id} in this workspace")
    _kick(queued.pop("endpoint_id"))
    return jsonify(queued), 202
