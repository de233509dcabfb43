"""A batch of messages (``POST /v1/messages/batch``): each item checked on its own, the valid ones
stored set-wise, and every item answered by its index with an id or an error.

Each item goes through what ``POST /v1/messages`` does to one message (the model, the due time,
``outgoing.resolve``, sharing one ``outgoing.Lookups``: the items' contacts are read in one query,
each template and channel configuration once), and a refusal names the item's field
(``messages[3].to``). The accepted
ones are inserted in one statement (``common.intake.insert_many``), and the items that could not
be inserted are explained with one query per kind: an earlier message with the item's
idempotency key (the same message: its id, as a replay; another message: a conflict), or a
pending one with the same unique tags (a duplicate, or its id with ``on_conflict: return``).

An item's idempotency key is its own ``idempotency_key`` or, when the request carries an
``Idempotency-Key``, that key with the item's index (``<key>[3]``): a batch re-run after its
process died mid-request finds the messages it already made instead of making them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common import intake
from services.ingest import idempotency, messages, outgoing
from services.ingest.batch_models import BatchItem
from services.ingest.errors import ApiError
from services.ingest.timing import due_time
from services.ingest.validation import validate

PENDING = ("accepted", "scheduled", "queued", "routed", "sending")


@dataclass(frozen=True)
class Ready:
    """An item that passed every check: what is stored, under which key, when due."""

    index: int
    new: dict[str, Any]
    key: str | None
    due: datetime | None
    on_conflict: str


def item_error(index: int, exc: ApiError) -> dict[str, Any]:
    """The result of a refused item: the error shape, its field given as the item's path."""
    where = f"messages[{index}]"
    return {"index": index, "error": {"code": exc.code, "message": f"{where}: {exc.message}",
                                      "field": f"{where}.{exc.field}" if exc.field else where}}


def prepare(workspace_id: int, items: list[Any], request_key: str | None) -> tuple[list[Ready], list[dict[str, Any]]]:
    """Check each item as ``POST /v1/messages`` checks one (call inside a transaction): the ready
    ones, and the results of the refused ones."""
    ready: list[Ready] = []
    refused: list[dict[str, Any]] = []
    valid: list[tuple[int, BatchItem]] = []
    for index, raw in enumerate(items):
        try:
            if not isinstance(raw, dict):
                raise ApiError(422, "invalid_request", "each message must be a JSON object")
            valid.append((index, validate(BatchItem, raw)))
        except ApiError as exc:
            refused.append(item_error(index, exc))
    lookups = outgoing.Lookups(workspace_id)
    lookups.load_contacts(body.contact_id for _, body in valid if body.contact_id is not None)  # one query for all
    for index, body in valid:
        try:
            due = due_time(body.send_at, body.timezone, body.delay_seconds)
            new = outgoing.resolve(workspace_id, body, lookups)
        except ApiError as exc:
            refused.append(item_error(index, exc))
            continue
        if body.idempotency_key is not None and body.idempotency_key.startswith(idempotency.RESERVED_PREFIXES):
            refused.append(item_error(index, ApiError(422, "invalid_request", "idempotency_key may not start with "
                                                      + " or ".join(idempotency.RESERVED_PREFIXES), "idempotency_key")))
            continue
        new.pop("idempotency_key", None)  # the item's key goes to the message's key column, not its fields
        key = body.idempotency_key or (f"{request_key}[{index}]" if request_key else None)
        ready.append(Ready(index, new, key, due.at, body.on_conflict))
    refused.sort(key=lambda result: result["index"])
    return ready, refused


def store(workspace_id: int, ready: list[Ready]) -> list[dict[str, Any]]:
    """Insert the ready items set-wise (call inside a transaction); their results, by index.
    Wakes the scheduler when one is scheduled."""
    rows = intake.insert_many(workspace_id, [(r.new, r.key, r.due) for r in ready]) if ready else []
    missed = [(r, row) for r, row in zip(ready, rows, strict=True) if row["id"] is None]
    earlier = messages.by_keys(workspace_id, [r.key for r, _ in missed if r.key is not None])
    twins = messages.pending_by_natural_keys(workspace_id, [row["natural_key"] for r, row in missed
                                                            if r.key not in earlier and row["natural_key"] is not None])
    results = []
    for r, row in zip(ready, rows, strict=True):
        if row["id"] is not None:
            results.append({"index": r.index, "id": row["id"], "status": row["status"]})
        elif r.key in earlier:
            results.append(_replayed(r, earlier[str(r.key)]))
        else:
            results.append(_duplicate(r, twins.get(row["natural_key"]) if row["natural_key"] else None))
    if any(row["status"] == "scheduled" for row in rows):
        intake.wake_scheduler()
    return results


def _replayed(item: Ready, earlier: dict[str, Any]) -> dict[str, Any]:
    if not messages.same_message(earlier, item.new):
        return item_error(item.index, ApiError(409, "idempotency_conflict", "this idempotency key was already used for a "
                                               "different message", "idempotency_key"))
    return {"index": item.index, "id": earlier["id"], "status": earlier["status"], "replayed": True}


def _duplicate(item: Ready, twin: dict[str, Any] | None) -> dict[str, Any]:
    if twin is not None and item.on_conflict == "return":
        return {"index": item.index, "id": twin["id"], "status": twin["status"], "replayed": True}
    which = f"message {twin['id']} is" if twin is not None else "another message was"
    return item_error(item.index, ApiError(409, "duplicate", f"{which} already pending with these unique tags; send "
                                           "on_conflict \"return\" to get it instead", "tags"))


def handed_on(ready: list[Ready], results: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The new ``accepted`` messages to hand to processing after the commit, by lane."""
    lanes = {r.index: r.new["priority"] for r in ready}
    out: dict[str, list[int]] = {}
    for result in results:
        if result.get("status") == "accepted" and not result.get("replayed"):
            out.setdefault(lanes[result["index"]], []).append(result["id"])
    return out
