"""The events postroom tells customers about, and the rule that writes them only when wanted.

Every status change runs one statement that may also append an outbox row (``common.lifecycle``).
Only public steps are events, and an event is written only when an enabled webhook endpoint of
the workspace subscribes to it, so a workspace without endpoints pays nothing for webhooks and
internal steps (queued, routed, sending) never cost a row.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

MESSAGE_STATUSES = ("accepted", "scheduled", "sent", "delivered", "read", "failed", "undelivered", "cancelled", "suppressed", "received")
MESSAGE_EVENTS = tuple(f"message.{s}" for s in MESSAGE_STATUSES)
ENDPOINT_DISABLED = "webhook_endpoint.disabled"
TEST_EVENT = "webhook.test"  # sent to one endpoint on request, whatever it subscribes to
# What an endpoint may subscribe to; message.clicked is written by a message's first click on one of
# its short links (common.links), campaign.completed by the campaign stage.
CLICKED = "message.clicked"
# A conversation's status changes (common.conversations): the bot has it, a person has it, resolved.
CONVERSATION_EVENTS = ("conversation.bot", "conversation.open", "conversation.resolved")
EVENT_TYPES = (*MESSAGE_EVENTS, CLICKED, "campaign.completed", *CONVERSATION_EVENTS, ENDPOINT_DISABLED)
# A webhook delivery's rank is its event's lane: an endpoint's urgent events go before its normal
# ones, and those before its bulk ones.
WEBHOOK_RANK = {"urgent": 0, "normal": 1, "bulk": 2}
LANE_OF_RANK = {rank: lane for lane, rank in WEBHOOK_RANK.items()}
ALL = "*"


def subscribed_sql(workspace: str, event_type: str) -> str:
    """SQL condition: an enabled endpoint of ``workspace`` wants ``event_type`` (SQL expressions)."""
    return (f"EXISTS (SELECT 1 FROM webhook_endpoint e WHERE e.workspace_id = {workspace} AND e.enabled"
            f" AND e.event_types && ARRAY['{ALL}', {event_type}])")


PUBLIC_STATUSES_SQL = "ARRAY[" + ", ".join(f"'{s}'" for s in MESSAGE_STATUSES) + "]"


def body(event_type: str, data: dict[str, Any], at: datetime | None = None) -> str:
    """The JSON a delivery sends, ``{"type", "timestamp", "data"}`` (the fan-out builds the same
    shape in SQL for outbox events)."""
    timestamp = (at or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":"))
