"""Counting a scenario's messages from both sides: the provider sandbox and the database.

The sandbox says how often each body reached the provider; the database says where each accepted
message ended. A message is *delivered once* when the provider received it exactly once and the
database does not contradict it; every extra copy the provider received is a *duplicate*; a
message is *lost* when, after the settle window, it is neither sent/delivered (and really received
by the provider) nor failed with a recorded reason; an *unknown outcome* is a message failed as
``outcome_unknown`` or ``interrupted`` — the pipeline gave up finding out whether it went out,
which only a channel whose provider offers no look-up may do (SMTP: a sender killed after DATA
cannot learn whether the relay took the message, and sending again could deliver it twice).

The webhooks stage is counted the same way, from the receiver's side: every ``message.sent``,
``message.delivered`` and ``message.failed`` step a scenario's message took (its history in the
database) is an event the chaos endpoint must have received with a 2xx answer at least once; one
never received is a *lost webhook*. Delivery is at least once, so a second 2xx receipt of the same
``webhook-id`` is allowed — a *webhook repeat* — and only counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.harness import UNSETTLED
from tests.chaos.traffic import ApiCall, Traffic

SENT = frozenset({"sent", "delivered", "read"})
UNKNOWN_CODES = frozenset({"outcome_unknown", "interrupted"})
SLOW_ANSWER_SECONDS = 5.0
WEBHOOK_EVENTS = ("message.sent", "message.delivered", "message.failed")  # what the chaos endpoint subscribes to


@dataclass
class Row:
    """One scenario's line of the chaos table, with the details behind it."""

    scenario: str
    posted: int
    messages: int  # accepted by the API (202)
    delivered_once: int = 0
    duplicates: int = 0  # extra copies the provider received
    lost: int = 0
    unknown: int = 0
    failed: int = 0  # failed with a recorded reason other than an unknown outcome
    unknown_by_channel: dict[str, int] = field(default_factory=dict)
    recovery_seconds: float | None = None  # None: not healthy again within the settle window
    api_calls_during_fault: int = 0
    api_statuses: dict[str, int] = field(default_factory=dict)
    api_slowest_seconds: float = 0.0
    api_503_without_retry_after: int = 0
    webhooks_expected: int = 0  # events the scenario's messages caused that the endpoint subscribes to
    webhooks_lost: int = 0  # expected events never received with a 2xx answer
    webhook_repeats: int = 0  # extra 2xx receipts of one webhook-id (allowed: at least once)
    webhooks_settle_seconds: float | None = None  # after the messages settled and the quiet moment; None: not in the window
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def count(row: Row, traffic: Traffic, received: list[str], tag: str,
          statuses: dict[int, tuple[str, str | None, str | None]]) -> Row:
    """Fill ``row``'s counts from what the sandbox received and what the database holds."""
    copies = Counter(body for body in received if body.startswith(tag + " "))
    row.duplicates = sum(n - 1 for n in copies.values() if n > 1)
    lost_examples: list[str] = []
    unknown_but_received = sent_never_received = 0
    for body, message_id in traffic.accepted.items():
        status, code, error = statuses.get(message_id, ("missing", None, None))
        reached = copies.get(body, 0)
        if status in SENT and reached:
            row.delivered_once += reached == 1
            continue
        if status in ("failed", "undelivered", "cancelled", "suppressed") and (code or error):
            if code in UNKNOWN_CODES:
                row.unknown += 1
                unknown_but_received += reached > 0
                channel = traffic.channels.get(body, "?")
                row.unknown_by_channel[channel] = row.unknown_by_channel.get(channel, 0) + 1
            else:
                row.failed += 1
            continue
        row.lost += 1
        sent_never_received += status in SENT
        if len(lost_examples) < 5:
            lost_examples.append(f"#{message_id} {status}" + (f" ({code})" if code else ""))
    if lost_examples:
        row.notes.append(f"lost, e.g.: {', '.join(lost_examples)}")
    if sent_never_received:
        row.notes.append(f"{sent_never_received} recorded as sent but never received by the provider")
    if row.unknown_by_channel:
        row.notes.append("unknown outcomes by channel: " + ", ".join(f"{c} {n}" for c, n in sorted(row.unknown_by_channel.items())))
    if unknown_but_received:
        row.notes.append(f"{unknown_but_received} failed as unknown although the provider had received them")
    stuck = sum(1 for mid in traffic.accepted.values() if statuses.get(mid, ("",))[0] in UNSETTLED)
    if stuck:
        row.notes.append(f"{stuck} still waiting for a stage (e.g. in sending) at the end")
    ghosts = sum(1 for body in copies if body not in traffic.accepted)
    if ghosts:
        row.notes.append(f"{ghosts} sent although the client never got a 202 for them")
    if traffic.refused:
        example = next(iter(traffic.refused.values()))
        row.notes.append(f"{len(traffic.refused)} never accepted by the API (e.g. {example})")
    return row


def count_webhooks(row: Row, traffic: Traffic, histories: dict[int, set[str]],
                   receipts: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """Fill ``row``'s webhook counts; returns the lost events as (message id, event type).

    ``histories``: the subscribed statuses each message's history records; ``receipts``: the
    requests the chaos endpoint's receiver got (its ``json`` body, ``headers``, ``status``).
    """
    ours = set(traffic.accepted.values())
    expected = {(mid, f"message.{status}") for mid, statuses in histories.items() if mid in ours for status in statuses}
    expected = {e for e in expected if e[1] in WEBHOOK_EVENTS}
    got: set[tuple[int, str]] = set()
    per_id: Counter[str] = Counter()
    without_id = 0
    for receipt in receipts:
        body = receipt.get("json")
        if not isinstance(body, dict) or not 200 <= int(receipt.get("status", 0)) < 300:
            continue
        data = body.get("data")
        if not isinstance(data, dict) or data.get("id") not in ours:
            continue
        got.add((int(data["id"]), str(body.get("type"))))
        webhook_id = {k.lower(): v for k, v in (receipt.get("headers") or {}).items()}.get("webhook-id")
        if webhook_id:
            per_id[webhook_id] += 1
        else:
            without_id += 1
    row.webhooks_expected = len(expected)
    lost = sorted(expected - got)
    row.webhooks_lost = len(lost)
    row.webhook_repeats = sum(n - 1 for n in per_id.values() if n > 1)
    if without_id:
        row.notes.append(f"{without_id} webhook receipts without a Webhook-Id header")
    return lost


def describe_api(row: Row, calls: list[ApiCall]) -> Row:
    """Fill in how the API answered the requests made during the fault."""
    row.api_calls_during_fault = len(calls)
    statuses = Counter(str(c.status) if c.status else "no answer" for c in calls)
    row.api_statuses = dict(sorted(statuses.items()))
    row.api_slowest_seconds = round(max((c.seconds for c in calls), default=0.0), 2)
    row.api_503_without_retry_after = sum(1 for c in calls if c.status == 503 and not c.retry_after)
    slow = sum(1 for c in calls if c.seconds > SLOW_ANSWER_SECONDS)
    if slow:
        row.notes.append(f"{slow} API requests took longer than {SLOW_ANSWER_SECONDS:g} s during the fault")
    if row.api_503_without_retry_after:
        row.notes.append(f"{row.api_503_without_retry_after} 503 answers without Retry-After")
    return row
