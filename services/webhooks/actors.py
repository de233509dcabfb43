"""The webhooks stage's actors, one per lane: ``deliver_webhooks_<lane>`` on queues
``webhooks_urgent`` and ``webhooks_bulk`` take ids of endpoints with deliveries due.

The process also runs the fan-out listener (``BACKGROUND``), which turns committed outbox
events into deliveries and kicks their endpoints on these actors.
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from services.webhooks import delivery, fanout

BACKGROUND = (fanout.listen,)


def deliver_webhooks(endpoint_ids: list[int]) -> None:
    delivery.run(endpoint_ids, current_lane())


ACTORS = lane_actors("webhooks", deliver_webhooks)
