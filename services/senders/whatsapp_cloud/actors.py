"""WhatsApp Cloud sender actors, one per lane: queues ``whatsapp_cloud_urgent`` and ``whatsapp_cloud_bulk``.

The channel is the shared sender loop over the Graph API client
(``common.providers.whatsapp_cloud.WHATSAPP_CLOUD``).
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.providers.whatsapp_cloud import WHATSAPP_CLOUD
from services.senders import loop


def send_whatsapp_cloud(ids: list[int]) -> None:
    loop.run(WHATSAPP_CLOUD, ids, current_lane())


ACTORS = lane_actors("whatsapp_cloud", send_whatsapp_cloud)
