"""``http`` channel sender actors, one per lane: queues ``http_urgent`` and ``http_bulk``.

The channel is the shared sender loop over the signed, SSRF-guarded POST of
``common.providers.http_channel``.
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.providers.channels import HTTP
from services.senders import loop


def send_http(ids: list[int]) -> None:
    loop.run(HTTP, ids, current_lane())


ACTORS = lane_actors("http", send_http)
