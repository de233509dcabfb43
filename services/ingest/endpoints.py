"""Webhook endpoints for the API: store, read, change and delete them, rotate their secrets, and
queue test events and replays. Every query is scoped by workspace.

Deliveries are only queued here (a row, then a kick to the webhooks stage by name after the
commit); the webhooks stage sends them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from common import crypto, events, signing
from common.db.connection import fetch, fetch_dicts

SECRET_OVERLAP_HOURS = 24
_COLUMNS = ("id, url, description, event_types, headers, rate_limit_per_second, enabled, disabled_reason,"
            " failing_since, paused_until, created_at, updated_at")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def view(row: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "url", "description", "event_types", "headers", "rate_limit_per_second",
                               "enabled", "disabled_reason")}
    out.update({k: _iso(row[k]) for k in ("failing_since", "paused_until", "created_at", "updated_at")})
    out["secret"] = secret
    return out


def create(workspace_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    secret = signing.new_secret()
    row = fetch_dicts(
        f"""INSERT INTO webhook_endpoint (workspace_id, url, description, event_types, headers, rate_limit_per_second,
                                         enabled, secret)
            VALUES (%(ws)s, %(url)s, %(description)s, %(event_types)s, %(headers)s::jsonb, %(rate)s, %(enabled)s, %(secret)s)
            RETURNING {_COLUMNS}""",
        {"ws": workspace_id, "url": fields["url"], "description": fields["description"],
         "event_types": list(dict.fromkeys(fields["event_types"])), "headers": json.dumps(fields["headers"]),
         "rate": fields["rate_limit_per_second"], "enabled": fields["enabled"],
         "secret": crypto.seal({"secret": secret})})[0]
    return view(row, secret)


def listing(workspace_id: int) -> list[dict[str, Any]]:
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM webhook_endpoint WHERE workspace_id = %s ORDER BY id", (workspace_id,))
    return [view(r) for r in rows]


def get(workspace_id: int, endpoint_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"SELECT {_COLUMNS} FROM webhook_endpoint WHERE workspace_id = %s AND id = %s",
                       (workspace_id, endpoint_id))
    return view(rows[0]) if rows else None


def change(workspace_id: int, endpoint_id: int, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Apply the given fields. Enabling an endpoint clears its failure record and pause."""
    sets, params = ["updated_at = now()"], {"ws": workspace_id, "id": endpoint_id}
    for name, value in fields.items():
        if name == "headers":
            sets.append("headers = %(headers)s::jsonb")
            value = json.dumps(value)
        elif name == "event_types":
            sets.append("event_types = %(event_types)s")
            value = list(dict.fromkeys(value))
        elif name == "rate_limit_per_second":
            sets.append("rate_limit_per_second = %(rate_limit_per_second)s")
        else:
            sets.append(f"{name} = %({name})s")
        params[name] = value
    if fields.get("enabled") is True:
        sets.append("disabled_reason = NULL, failing_since = NULL, paused_until = NULL")
    if fields.get("enabled") is False:
        sets.append("disabled_reason = 'disabled through the API'")
    rows = fetch_dicts(f"UPDATE webhook_endpoint SET {', '.join(sets)} WHERE workspace_id = %(ws)s AND id = %(id)s"
                       f" RETURNING {_COLUMNS}", params)
    if rows and fields.get("enabled") is False:  # a disabled endpoint is sent nothing; replay what it missed later
        fetch("UPDATE webhook_delivery SET status = 'failed', finished_at = now(), last_error = 'endpoint disabled through the API'"
              " WHERE endpoint_id = %s AND status = 'pending'", (endpoint_id,))
    return view(rows[0]) if rows else None


def is_enabled(workspace_id: int, endpoint_id: int) -> bool | None:
    """Whether the endpoint is enabled; None if this workspace has no such endpoint."""
    rows = fetch("SELECT enabled FROM webhook_endpoint WHERE workspace_id = %s AND id = %s", (workspace_id, endpoint_id))
    return bool(rows[0][0]) if rows else None


def delete(workspace_id: int, endpoint_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"DELETE FROM webhook_endpoint WHERE workspace_id = %s AND id = %s RETURNING {_COLUMNS}",
                       (workspace_id, endpoint_id))
    return view(rows[0]) if rows else None


def rotate_secret(workspace_id: int, endpoint_id: int) -> dict[str, Any] | None:
    """A new secret signs from now; the current one keeps signing beside it for 24 hours."""
    secret = signing.new_secret()
    rows = fetch_dicts(
        """UPDATE webhook_endpoint SET previous_secret = secret, secret = %s, updated_at = now(),
                  previous_secret_until = now() + %s * interval '1 hour'
           WHERE workspace_id = %s AND id = %s RETURNING previous_secret_until""",
        (crypto.seal({"secret": secret}), SECRET_OVERLAP_HOURS, workspace_id, endpoint_id))
    return {"secret": secret, "previous_valid_until": _iso(rows[0]["previous_secret_until"])} if rows else None


def queue_test(workspace_id: int, endpoint_id: int) -> dict[str, Any] | None:
    """A ``webhook.test`` delivery to this endpoint, if it is enabled."""
    body = events.body(events.TEST_EVENT, {"endpoint_id": endpoint_id, "message": "a test event from postroom"})
    rows = fetch_dicts(
        """INSERT INTO webhook_delivery (endpoint_id, workspace_id, event_key, event_type, body, rank)
           SELECT id, workspace_id, 'test_' || md5(random()::text || clock_timestamp()::text), %s, %s, 0
           FROM webhook_endpoint WHERE workspace_id = %s AND id = %s AND enabled
           RETURNING id, event_key, event_type""",
        (events.TEST_EVENT, body, workspace_id, endpoint_id))
    return {"delivery_id": rows[0]["id"], "webhook_id": rows[0]["event_key"], "event_type": rows[0]["event_type"]} if rows else None


_COPY = """
INSERT INTO webhook_delivery (endpoint_id, workspace_id, event_key, event_type, body, rank)
SELECT endpoint_id, workspace_id, event_key, event_type, body, 0 FROM webhook_delivery d
WHERE d.workspace_id = %(ws)s AND {where}
  AND EXISTS (SELECT 1 FROM webhook_endpoint e WHERE e.id = d.endpoint_id AND e.enabled)
ORDER BY d.id
RETURNING id, endpoint_id, event_key, event_type
"""


def replay_delivery(workspace_id: int, delivery_id: int) -> dict[str, Any] | None:
    """Queue the delivery's event again (same webhook-id, so the receiver can tell it is a replay)."""
    rows = fetch_dicts(_COPY.format(where="d.id = %(id)s"), {"ws": workspace_id, "id": delivery_id})
    if not rows:
        return None
    return {"delivery_id": rows[0]["id"], "webhook_id": rows[0]["event_key"], "event_type": rows[0]["event_type"],
            "endpoint_id": rows[0]["endpoint_id"]}


def endpoint_of(workspace_id: int, delivery_id: int) -> int | None:
    rows = fetch("SELECT endpoint_id FROM webhook_delivery WHERE workspace_id = %s AND id = %s", (workspace_id, delivery_id))
    return rows[0][0] if rows else None


def replay_since(workspace_id: int, endpoint_id: int, since: datetime) -> int | None:
    """Queue again every event this endpoint was sent (or tried) since ``since``, once each."""
    if not fetch("SELECT 1 FROM webhook_endpoint WHERE workspace_id = %s AND id = %s", (workspace_id, endpoint_id)):
        return None
    rows = fetch_dicts(_COPY.format(where="""d.id IN (SELECT DISTINCT ON (event_key) id FROM webhook_delivery
                                             WHERE endpoint_id = %(e)s AND created_at >= %(since)s
                                             ORDER BY event_key, id)"""),
        {"ws": workspace_id, "e": endpoint_id, "since": since})
    return len(rows)


def attempts(workspace_id: int, endpoint_id: int, limit: int, before: int | None) -> list[dict[str, Any]] | None:
    """The endpoint's attempts, newest first, ``limit`` of them older than attempt ``before``."""
    if not fetch("SELECT 1 FROM webhook_endpoint WHERE workspace_id = %s AND id = %s", (workspace_id, endpoint_id)):
        return None
    rows = fetch_dicts(
        """SELECT a.id AS attempt_id, a.delivery_id, d.event_key AS webhook_id, d.event_type, a.attempt, a.at,
                  a.status_code, a.latency_ms, a.response, a.error, a.next_attempt_at, d.status AS delivery_status
           FROM webhook_attempt a JOIN webhook_delivery d ON d.id = a.delivery_id
           WHERE a.endpoint_id = %s AND d.workspace_id = %s AND a.id < %s
           ORDER BY a.id DESC LIMIT %s""",
        (endpoint_id, workspace_id, before or 2**63 - 1, limit))
    for row in rows:
        row["at"], row["next_attempt_at"] = _iso(row["at"]), _iso(row["next_attempt_at"])
    return rows
