"""Consent by keyword: what a customer's STOP, START or HELP on SMS or WhatsApp does, and the
workspace's consent settings.

An inbound message whose whole text is an opt-out keyword (STOP, STOPALL, UNSUBSCRIBE, END,
QUIT, CANCEL, REVOKE, OPTOUT; PROVIDERS.md) suppresses the sender's address on the channel it
came in on, with reason ``opt_out``; START, YES or UNSTOP lifts that opt-out (and, on SMS, the
``provider_21610`` entry a send after a STOP left, since Twilio lifts its own block on START too),
never a bounce, a complaint or an operator's entry. HELP or INFO is answered with the workspace's
help text, when it has one, as an ordinary urgent message through the pipeline from the identity
the customer wrote to (its links as written, not short links), even to a person who opted out:
carriers expect HELP answered after a STOP (the provider may still refuse it). Case, surrounding space and trailing punctuation do not matter ("Stop.");
a sentence that contains a keyword is only a message.

``heed`` runs in the webhook's transaction right after ``common.inbound.store`` stored the
message for the first time, so a webhook delivered twice acts once. Twilio applies the same
keywords itself on its numbers (Advanced Opt-Out): recording them here as well is what keeps
a STOP holding on every channel route and in the API's suppression list.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from common import dispatch, intake, phones, suppression
from common.db.connection import fetch_dicts
from common.inbound import Inbound
from common.receipts import storable

OPT_OUT_WORDS = frozenset({"stop", "stopall", "unsubscribe", "end", "quit", "cancel", "revoke", "optout"})
OPT_IN_WORDS = frozenset({"start", "yes", "unstop"})
HELP_WORDS = frozenset({"help", "info"})
CHANNELS = ("sms", "whatsapp_cloud", "whatsapp_qr")
# What a START lifts on each channel: the person's own opt-out (and on SMS Twilio's record of it).
LIFTED_BY_START = {"sms": ("opt_out", "provider_21610"), "whatsapp_cloud": ("opt_out",), "whatsapp_qr": ("opt_out",)}
HELP_TAG = "consent:help"
MAX_KEYWORD = 40  # longer text is never a keyword: no need to look closer


def keyword(body: str) -> str | None:
    """``opt_out``, ``opt_in`` or ``help`` when ``body`` is one of their keywords, else None."""
    if len(body) > MAX_KEYWORD:
        return None
    word = body.strip()
    while word and unicodedata.category(word[-1]).startswith("P"):
        word = word[:-1]
    word = word.strip().casefold()
    if word in OPT_OUT_WORDS:
        return "opt_out"
    if word in OPT_IN_WORDS:
        return "opt_in"
    return "help" if word in HELP_WORDS else None


def heed(message: Inbound) -> list[dict[str, Any]]:
    """Act on the keyword of a newly stored inbound ``message`` (inside its transaction).

    Returns:
      The help answer accepted for it, if any (dicts with ``id``, ``priority`` and ``channel``),
      for the caller to hand to processing once the transaction commits.
    """
    kind = keyword(message.body) if message.channel in CHANNELS else None
    if kind is None:
        return []
    address = _address(storable(message.from_addr))
    if kind == "opt_out":
        suppression.add([{"workspace_id": message.workspace_id, "channel": message.channel, "address": address,
                          "reason": suppression.OPT_OUT, "source": f"inbound:{message.channel}"}])
        return []
    if kind == "opt_in":
        suppression.lift(message.workspace_id, message.channel, address, LIFTED_BY_START[message.channel])
        return []
    return _answer_help(message, address)


def hand_on(answers: list[dict[str, Any]]) -> None:
    """Hand the answers ``heed`` accepted to processing, by lane; call after their transaction
    committed (a lost hand-off is re-driven by the reconciler, as for any accepted message)."""
    for (lane, _), ids in dispatch.by_lane(answers).items():
        dispatch.handoff.submit("processing", lane, ids)


def _address(sender: str) -> str:
    """The sender's number as outgoing messages store it (E.164), or as reported if it is no number."""
    try:
        return phones.normalize(sender)
    except ValueError:
        return sender


def _answer_help(message: Inbound, address: str) -> list[dict[str, Any]]:
    text = settings_of(message.workspace_id)["help_text"]
    if not text:
        return []
    row = intake.insert(message.workspace_id, {
        "channel": message.channel, "to": address, "from": storable(message.to_addr) or None, "body": text,
        "priority": "urgent", "tags": [HELP_TAG],
        # sent as written, and past the person's own opt-out (``suppression.suppress_messages``):
        # only this code sets consent_reply, which no API request can
        "content": {"track_clicks": False, "consent_reply": "help"}}, None)
    return [{"id": row["id"], "priority": row["priority"], "channel": message.channel}] if row else []


# --- the workspace's consent settings --------------------------------------------------------------

SETTINGS = ("help_text", "urgent_bypasses_opt_out")


def settings_of(workspace_id: int) -> dict[str, Any]:
    """The workspace's ``help_text`` (None: HELP is not answered) and ``urgent_bypasses_opt_out``."""
    return fetch_dicts("SELECT help_text, urgent_bypasses_opt_out FROM workspace WHERE id = %s", (workspace_id,))[0]


def change_settings(workspace_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Set the given ``SETTINGS`` (a None ``help_text`` removes it); returns them all as now set."""
    assigned = ", ".join(f"{name} = %({name})s" for name in SETTINGS if name in changes)
    if not assigned:
        return settings_of(workspace_id)
    return fetch_dicts(f"UPDATE workspace SET {assigned} WHERE id = %(ws)s RETURNING {', '.join(SETTINGS)}",
                       {**{name: changes[name] for name in SETTINGS if name in changes}, "ws": workspace_id})[0]
