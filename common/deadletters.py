"""Dramatiq's dead-letter lists, for an operator to inspect and replay.

A broker message whose actor kept failing past its retries lands in ``<queue>.XQ`` (kept for a
week). It only ever carries message ids: the messages themselves stay in PostgreSQL, in the
status they had, so replaying hands the same ids to the same stage and its compare-and-set claim
skips any that have moved on meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from common.broker import lanes_of, queue_name
from common.dispatch import STAGES


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    broker_message_id: str
    actor: str
    ids: list[int]
    dead_at: datetime
    retries: int
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "dead_at": self.dead_at.isoformat()}


def queues() -> list[str]:
    return [queue_name(stage, lane) for stage in STAGES for lane in lanes_of(stage)]


def _keys(broker: RedisBroker, queue: str) -> tuple[str, str]:
    zset = f"{broker.namespace}:{queue}.XQ"
    return zset, f"{zset}.msgs"


def list_dead_letters(broker: RedisBroker) -> list[DeadLetter]:
    found = []
    client: Any = broker.client  # redis-py's return types are too loose to check usefully
    for queue in queues():
        zset, messages = _keys(broker, queue)
        for member, score in client.zrange(zset, 0, -1, withscores=True):
            raw = client.hget(messages, member)
            if raw is None:
                continue
            message = dramatiq.Message.decode(raw)
            error = (message.options.get("traceback") or "").strip().splitlines()
            found.append(DeadLetter(
                queue=queue, broker_message_id=member.decode(), actor=message.actor_name,
                ids=list(message.args[0]) if message.args else [],
                dead_at=datetime.fromtimestamp(score / 1000, UTC),
                retries=int(message.options.get("retries", 0)), error=error[-1] if error else "",
            ))
    return sorted(found, key=lambda d: d.dead_at)


def replay(broker: RedisBroker, broker_message_ids: Iterable[str] | None = None) -> int:
    """Enqueue dead-lettered broker messages again (all, or those named) with a fresh retry budget."""
    wanted = set(broker_message_ids) if broker_message_ids is not None else None
    replayed = 0
    for letter in list_dead_letters(broker):
        if wanted is not None and letter.broker_message_id not in wanted:
            continue
        zset, messages = _keys(broker, letter.queue)
        # Remove first: if the process dies here the ids are still in PostgreSQL for the reconciler.
        if broker.client.zrem(zset, letter.broker_message_id):
            broker.client.hdel(messages, letter.broker_message_id)
            broker.enqueue(dramatiq.Message(queue_name=letter.queue, actor_name=letter.actor,
                                            args=(letter.ids,), kwargs={}, options={}))
            replayed += 1
    return replayed
