"""SMS sender actors, one per lane: queues ``sms_urgent`` and ``sms_bulk``."""

from __future__ import annotations

from common import dispatch
from common.broker import current_lane, lane_actors
from services.senders.sms.delivery import deliver


def send_sms(ids: list[int]) -> None:
    followups = deliver(ids, current_lane())
    for lane, retry_ids, delay_ms in followups.retries:
        dispatch.to_stage("sms", lane, retry_ids, delay_ms=delay_ms)


ACTORS = lane_actors("sms", send_sms)
