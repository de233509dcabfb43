"""Who holds a conversation (the bot, a person, nobody) and the one statement that moves it.

A conversation is ``bot`` (the AI stage answers its inbound messages), ``open`` (a person has it:
the bot stays silent) or ``resolved``. Every move is one compare-and-set statement that also
writes the conversation's history row and, when an endpoint subscribes, its ``conversation.*``
event, so two movers racing each other cannot both win and no move goes unrecorded. ``after_store``
is what an inbound webhook does after storing a customer's message: heed a consent keyword, and
mark the message for the AI stage when the conversation is the bot's (a resolved one becomes the
bot's again, or a person's when the channel has no enabled chatbot). The bot never talks over a
person: the sender's claim re-checks ``BOT_IN_CHARGE_SQL``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common import consent, dispatch, events, metrics
from common.db.connection import fetch, fetch_dicts
from common.inbound import Inbound

STATUSES = ("bot", "open", "resolved")
# Who moves a conversation (conversation_event.by, and the metric's label).
MOVERS = ("api", "agent", "bot", "inbound", "reconciler")

# A claimed outgoing message may be sent unless it is the bot's own reply and the conversation has
# changed hands since the reply was made: a person took it meanwhile, or took it, resolved it and
# the customer's next message gave it back to the bot (a reply that waited out a retry must not
# answer a question of before). Handoff texts (author bot_handoff) always go.
BOT_IN_CHARGE_SQL = ("(m.author IS DISTINCT FROM 'bot' OR EXISTS (SELECT 1 FROM conversation c"
                     " WHERE c.id = m.conversation_id AND c.status = 'bot' AND c.status_changed_at <= m.created_at))")

# Emails nobody typed: answering them makes mail loops (RFC 3834).
AUTOMATIC_PRECEDENCE = ("bulk", "auto_reply", "junk", "list")


def recorded_sql(moved: str) -> str:
    """The CTEs that follow a CTE ``moved`` (the moved conversation rows plus ``previous``, and the
    parameters ``reason``, ``by``, ``mid`` and ``note``): the history row, and the event for the
    workspace's subscribed endpoints."""
    return f""", ev AS (
    INSERT INTO conversation_event (conversation_id, workspace_id, status, previous, reason, by, message_id, note)
    SELECT id, workspace_id, status, previous, %(reason)s, %(by)s, %(mid)s, %(note)s FROM {moved}
), ob AS (
    INSERT INTO outbox (workspace_id, event_type, payload, lane)
    SELECT workspace_id, 'conversation.' || status,
           jsonb_build_object('id', id, 'channel', channel, 'address', address, 'status', status, 'previous', previous,
                              'reason', %(reason)s::text, 'by', %(by)s::text, 'at', clock_timestamp()), 'urgent'
    FROM {moved} WHERE """ + events.subscribed_sql(f"{moved}.workspace_id", f"'conversation.' || {moved}.status") + """
)"""


_MOVE = """
WITH moved AS (
    UPDATE conversation c SET status = %(to)s, status_changed_at = now(), status_reason = %(reason)s,
           resolved_at = CASE WHEN %(to)s = 'resolved' THEN now() ELSE c.resolved_at END,
           context_after_id = CASE WHEN %(to)s = 'resolved'
               THEN coalesce((SELECT max(id) FROM message WHERE conversation_id = c.id), c.context_after_id)
               ELSE c.context_after_id END
    FROM (SELECT id, status AS previous FROM conversation WHERE id = %(id)s AND workspace_id = %(ws)s FOR UPDATE) old
    WHERE c.id = old.id AND c.status = ANY(%(expected)s)
    RETURNING c.*, old.previous
)""" + recorded_sql("moved") + """
SELECT * FROM moved
"""


def move(workspace_id: int, conversation_id: int, expected: Sequence[str], to: str, reason: str | None, by: str,
         *, message_id: int | None = None, note: str | None = None) -> dict[str, Any] | None:
    """Move the conversation to ``to`` if its status is one of ``expected`` (inside the caller's
    transaction; one statement, the row locked). A move to ``resolved`` stamps ``resolved_at`` and
    starts the bot's next context after the conversation's last message.

    Returns:
      The moved row (with ``previous``), or None when it is not in this workspace or not in an
      ``expected`` status (``current`` tells which).
    """
    rows = fetch_dicts(_MOVE, {"to": to, "reason": reason, "id": conversation_id, "ws": workspace_id,
                               "expected": list(expected), "by": by, "mid": message_id, "note": note})
    if not rows:
        return None
    metrics.CONVERSATION_STATUS_CHANGES.labels(status=to, by=by).inc()
    return rows[0]


def current(workspace_id: int, conversation_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    """The conversation as it is now, or None when the workspace has no such conversation."""
    rows = fetch_dicts("SELECT * FROM conversation WHERE id = %s AND workspace_id = %s" + (" FOR UPDATE" if lock else ""),
                       (conversation_id, workspace_id))
    return rows[0] if rows else None


def history(workspace_id: int, conversation_id: int) -> list[dict[str, Any]]:
    """The conversation's status changes, oldest first."""
    return fetch_dicts("SELECT id, status, previous, reason, by, message_id, note, at FROM conversation_event"
                       " WHERE conversation_id = %s AND workspace_id = %s ORDER BY id", (conversation_id, workspace_id))


# --- inbound: what a newly stored customer message starts ------------------------------------------

# One statement per stored message, all primary-key lookups (the conversation row is already
# locked by the store's upsert): a resolved conversation reopens, to the bot when the channel has
# an enabled chatbot, else to the agents' open list; the message is marked for the AI stage when
# the bot has the conversation.
_FOR_THE_BOT = """
WITH reopened AS (
    UPDATE conversation c SET status_changed_at = now(), status_reason = 'inbound',
           status = CASE WHEN EXISTS (SELECT 1 FROM chatbot b WHERE b.workspace_id = c.workspace_id
                                      AND b.channel = c.channel AND b.enabled) THEN 'bot' ELSE 'open' END
    FROM (SELECT id, status AS previous FROM conversation
          WHERE id = (SELECT conversation_id FROM message WHERE id = %(mid)s) AND status = 'resolved' FOR UPDATE) old
    WHERE c.id = old.id AND c.status = 'resolved'
    RETURNING c.*, old.previous
)""" + recorded_sql("reopened") + """
UPDATE message m SET ai_lane = w.plan FROM conversation cv, chatbot b, workspace w
WHERE m.id = %(mid)s AND cv.id = m.conversation_id
  AND (cv.status = 'bot' OR cv.id IN (SELECT id FROM reopened WHERE status = 'bot'))
  AND b.workspace_id = m.workspace_id AND b.channel = m.channel AND b.enabled AND w.id = m.workspace_id
RETURNING m.id, m.ai_lane
"""


@dataclass
class Followups:
    """What stored inbound messages leave to do once their transaction commits: consent answers
    for processing, and turns for the AI stage by plan lane."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    turns: dict[str, list[int]] = field(default_factory=dict)

    def __add__(self, other: Followups) -> Followups:
        turns = {lane: list(ids) for lane, ids in self.turns.items()}
        for lane, ids in other.turns.items():
            turns.setdefault(lane, []).extend(ids)
        return Followups(self.answers + other.answers, turns)

    def hand_on(self) -> None:
        """Hand the answers to processing and the turns to the AI stage; call after the commit
        (a lost hand-off is re-driven by the reconcilers)."""
        consent.hand_on(self.answers)
        for lane, ids in self.turns.items():
            dispatch.handoff.submit("ai", lane, ids)


def after_store(message: Inbound, message_id: int) -> Followups:
    """Act on a customer message ``inbound.store`` has just stored (inside its transaction): heed
    its consent keyword; else reopen a resolved conversation (to the bot when the channel has an
    enabled chatbot, else to a person: ``open``), and when the bot has the conversation mark the
    message for the AI stage in the workspace's plan lane. An email sent by a machine (an
    auto-reply, a bounce) is never answered: that is how mail loops start."""
    answers = consent.heed(message)
    if _keyword(message) or _automatic(message):
        return Followups(answers)
    rows = fetch_dicts(_FOR_THE_BOT, {"mid": message_id, "reason": "inbound", "by": "inbound", "note": None})
    turns: dict[str, list[int]] = {}
    for row in rows:
        turns.setdefault(row["ai_lane"], []).append(row["id"])
    return Followups(answers, turns)


def _keyword(message: Inbound) -> bool:
    return message.channel in consent.CHANNELS and consent.keyword(message.body) is not None


def _automatic(message: Inbound) -> bool:
    """An email that says it was sent automatically (``Auto-Submitted`` other than ``no``, or a
    bulk/auto-reply ``Precedence``), as the relay passed its headers on in ``extra``."""
    if message.channel != "email":
        return False
    headers = {str(k).lower(): str(v).strip().lower() for k, v in (message.extra.get("headers") or {}).items()}
    submitted = headers.get("auto-submitted") or str(message.extra.get("auto_submitted") or "").lower()
    return (bool(submitted) and submitted != "no") or headers.get("precedence") in AUTOMATIC_PRECEDENCE


def last_inbound_to(conversation_id: int) -> str | None:
    """Our address the customer last wrote to in this conversation (the identity a reply comes from)."""
    rows = fetch("SELECT to_addr FROM message WHERE conversation_id = %s AND direction = 'inbound' ORDER BY id DESC LIMIT 1",
                 (conversation_id,))
    return rows[0][0] if rows else None
