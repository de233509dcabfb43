"""Send work to another stage by queue and actor name, never by importing its actor module.

The broker message carries ids (and the lane), never bodies: PostgreSQL is the source of truth
and the reconciler re-drives anything a lost broker message leaves behind. Call ``to_stage``
only after the transaction that recorded the work has committed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import dramatiq

from common import lifecycle
from common.broker import actor_name, queue_name
from common.config import settings

log = logging.getLogger("postroom.dispatch")

# stage -> (actor base name); queue is "<stage>_<lane>", actor "<base>_<lane>".
STAGES: dict[str, str] = {
    "processing": "process_messages",
    "routing": "route_messages",
    "sms": "send_sms",
    "http": "send_http",
    "email": "send_email",
    "whatsapp_cloud": "send_whatsapp_cloud",
    "whatsapp_qr": "send_whatsapp_qr",
    "webhooks": "deliver_webhooks",
    "receipts": "apply_receipts",
    "ai": "answer_turns",  # lanes premium, pro, basic (common.broker.PLAN_LANES)
    "widget": "send_widget",
}
# The channels, each with its own sender stage (queues "<channel>_urgent" and "<channel>_bulk").
SENDERS: tuple[str, ...] = ("sms", "http", "email", "whatsapp_cloud", "whatsapp_qr", "widget")
# Stages whose broker messages carry fewer ids than POSTROOM_BATCH_SIZE: an AI batch's turns each
# make a model call of up to POSTROOM_AI_TIMEOUT_SECONDS, and the batch must end within its
# actor's time limit (the lease) however many of its turns wait for one of the lane's call slots.
BATCH_SIZES: dict[str, int] = {"ai": 16}


def to_stage(stage: str, lane: str, ids: Sequence[int], *, delay_ms: int | None = None) -> None:
    """Enqueue ``ids`` for ``stage`` in ``lane``, split into batches of at most POSTROOM_BATCH_SIZE
    (``BATCH_SIZES`` for the stages that take fewer)."""
    broker = dramatiq.get_broker()
    size = BATCH_SIZES.get(stage, settings.postroom_batch_size)
    for start in range(0, len(ids), size):
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue_name(stage, lane),
            actor_name=actor_name(STAGES[stage], lane),
            args=(list(ids[start : start + size]),),
            kwargs={},
            options={},
        )
        broker.enqueue(message, delay=delay_ms if delay_ms and delay_ms > 0 else None)


def committed_to_stage(stage: str, lane: str, ids: Sequence[int]) -> bool:
    """``to_stage`` for work an API request has committed: a broker that fails is logged, not
    raised, so the request still answers what it did (its messages wait in PostgreSQL, and the
    reconciler hands them on once they are past the stage's deadline). False when it failed."""
    try:
        to_stage(stage, lane, ids)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the work is stored either way
        log.warning("enqueueing %d committed ids for %s/%s failed (%s: %s); the reconciler re-drives them",
                    len(ids), stage, lane, type(exc).__name__, exc)
        return False
    return True


def by_lane(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    """Group moved messages (dicts with id, priority, channel) by (lane, channel), keeping order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        groups.setdefault((row["priority"], row["channel"]), []).append(row["id"])
    return groups


def hand_on(stage: str | None, moved: Sequence[dict[str, Any]], *, committed: bool = False) -> None:
    """Enqueue moved messages for ``stage`` by lane; ``stage=None`` sends each to its channel's sender.
    ``committed``: an API request's committed work, whose broker failure is logged, not raised."""
    for (lane, channel), ids in by_lane(moved).items():
        if committed:
            committed_to_stage(stage or channel, lane, ids)
        else:
            to_stage(stage or channel, lane, ids)


def to_waiting_stages(rows: Sequence[dict[str, Any]], *, committed: bool = False) -> None:
    """Enqueue waiting messages (dicts with id, status, priority, channel), each for the stage its
    status waits for (``lifecycle.WAITING_FOR``): the reconciler's re-drives and a resumed campaign.
    ``committed``: for an API request's committed work, a broker failure is logged, not raised."""
    for status, stage in lifecycle.WAITING_FOR.items():
        hand_on(None if stage == "sender" else stage, [r for r in rows if r["status"] == status], committed=committed)


class Coalescer:
    """Gathers ids handed to a stage for a few milliseconds and enqueues them as one batch.

    Ingest accepts messages one request at a time; enqueueing each alone would make every later
    stage pay its per-message overhead (a broker message, a claim, a commit) once per message.
    Ids are submitted only after their rows committed, and an enqueue that fails or is lost with
    the process is covered by the reconciler, which re-drives rows waiting past their deadline.
    """

    def __init__(self, linger_ms: float, max_batch: int):
        self.linger = linger_ms / 1000
        self.max_batch = max_batch
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._size = 0
        self._cond = threading.Condition()
        self._owner_pid = 0

    def submit(self, stage: str, lane: str, ids: Sequence[int]) -> None:
        with self._cond:
            if self._owner_pid != os.getpid():  # first use in this (possibly forked) process
                self._owner_pid = os.getpid()
                self._pending, self._size = {}, 0
                threading.Thread(target=self._run, name="handoff-coalescer", daemon=True).start()
                atexit.register(self.flush)
            self._pending.setdefault((stage, lane), []).extend(ids)
            self._size += len(ids)
            self._cond.notify()

    def _take(self) -> dict[tuple[str, str], list[int]]:
        batches, self._pending, self._size = self._pending, {}, 0
        return batches

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._size:
                    self._cond.wait()
                deadline = time.monotonic() + self.linger
                while self._size < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batches = self._take()
            self._enqueue(batches)

    def flush(self) -> None:
        with self._cond:
            batches = self._take()
        self._enqueue(batches)

    @staticmethod
    def _enqueue(batches: dict[tuple[str, str], list[int]]) -> None:
        for (stage, lane), ids in batches.items():
            try:
                to_stage(stage, lane, ids)
            except Exception:  # the rows are committed: the reconciler re-drives them
                log.exception("enqueue of %d ids to %s/%s failed; the reconciler will re-drive them", len(ids), stage, lane)


handoff = Coalescer(settings.postroom_handoff_linger_ms, settings.postroom_batch_size)
