"""Counting a scenario's messages from both sides: the provider sandbox and the database.

The sandbox says how often each body reached the provider; the database says where each accepted
message ended. A message is *delivered once* when the provider received it exactly once and the
database does not contradict it; every extra copy the provider received is a *duplicate*; a
message is *lost* when, after the settle window, it is neither sent/delivered (and really received
by the provider) nor failed with a recorded reason; an *unknown outcome* is a message failed as
``outcome_unknown`` or ``interrupted`` — the pipeline gave up finding out whether it went out.
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
    recovery_seconds: float | None = None  # None: not healthy again within the settle window
    api_calls_during_fault: int = 0
    api_statuses: dict[str, int] = field(default_factory=dict)
    api_slowest_seconds: float = 0.0
    api_503_without_retry_after: int = 0
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
