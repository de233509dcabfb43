"""WhatsApp QR sender actors, one per lane: queues ``whatsapp_qr_urgent`` and ``whatsapp_qr_bulk``.

The channel is the shared sender loop over the WAHA client (``common.providers.waha.WHATSAPP_QR``):
each session paced, a session that is not WORKING holding its messages.
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.providers.waha import WHATSAPP_QR
from services.senders import loop


def send_whatsapp_qr(ids: list[int]) -> None:
    loop.run(WHATSAPP_QR, ids, current_lane())


ACTORS = lane_actors("whatsapp_qr", send_whatsapp_qr)
