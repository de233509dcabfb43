"""SMS sender actors, one per lane: queues ``sms_urgent`` and ``sms_bulk``.

The SMS channel is the shared sender loop over the Twilio client (``common.providers.channels.SMS``).
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.providers.channels import SMS
from services.senders import loop


def send_sms(ids: list[int]) -> None:
    loop.run(SMS, ids, current_lane())


ACTORS = lane_actors("sms", send_sms)
