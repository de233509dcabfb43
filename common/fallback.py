"""Fallback: a message that cannot reach its recipient on one channel moves on to the next.

A message may carry an ordered route, ``[{"channel": "whatsapp_cloud", "to": "+1..."},
{"channel": "sms", "to": "+1..."}]``, and ``route_step`` says which entry is being tried. When
a channel reports the recipient unreachable there (a permanent error with ``fallback``: not on
WhatsApp, 131047 without a template, SMS 21614), ``move_on`` switches the message to the next
entry in one compare-and-set statement: back to ``queued`` for routing, on the new channel and
address, with a fresh retry budget and no provider id. Its history keeps the failed attempt
(the ``queued`` event names the channel it left and why), so the status API shows every attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import metrics
from common.db.connection import fetch_dicts

_MOVE_ON = """
WITH v AS (
    SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(codes)s::text[]) AS code, unnest(%(errors)s::text[]) AS error
), moved AS (
    UPDATE message m SET status = 'queued',
           channel = m.routes -> (m.route_step + 1) ->> 'channel',
           to_addr = m.routes -> (m.route_step + 1) ->> 'to',
           from_addr = NULL, route_step = m.route_step + 1,
           provider = NULL, provider_message_id = NULL, provider_account = NULL, lookup_at = NULL, due_at = NULL,
           attempts = 0, throttles = 0, redrives = 0, segments = NULL,
           error_code = v.code, last_error = v.error, status_changed_at = now(), updated_at = now()
    FROM v
    WHERE m.id = v.id AND (m.status || '') = ANY(%(expected)s) AND m.routes IS NOT NULL
      AND jsonb_array_length(m.routes) > m.route_step + 1
    RETURNING m.id, m.workspace_id, m.priority, m.channel, m.to_addr, m.route_step, v.code, v.error,
              m.routes -> (m.route_step - 1) ->> 'channel' AS left_channel
), ev AS (
    INSERT INTO message_event (message_id, status, detail)
    SELECT id, 'queued', jsonb_build_object('fallback', true, 'from_channel', left_channel, 'channel', channel,
                                            'to', to_addr, 'route_step', route_step, 'error_code', code, 'error', error)
    FROM moved
)
SELECT id, workspace_id, priority, channel FROM moved
"""


def move_on(outcomes: Sequence[dict[str, Any]], expected: Sequence[str]) -> list[dict[str, Any]]:
    """Move each message of ``outcomes`` (``id``, ``code``, ``error``) whose status is in
    ``expected`` and whose route has a further channel to that channel, as ``queued``.

    Returns:
      The moved messages (``id``, ``workspace_id``, ``priority``, ``channel``: the new one); hand
      them to routing after the commit. Messages without a further channel are not touched.
    """
    if not outcomes:
        return []
    rows = fetch_dicts(_MOVE_ON, {
        "ids": [o["id"] for o in outcomes], "codes": [o.get("code") for o in outcomes],
        "errors": [o.get("error") for o in outcomes], "expected": list(expected),
    }, prepared=True)
    for row in rows:
        metrics.FALLBACKS.labels(channel=row["channel"]).inc()
    return rows
