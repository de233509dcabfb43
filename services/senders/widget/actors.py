"""Widget sender actors, one per lane: queues ``widget_urgent``, ``widget_normal`` and ``widget_bulk``.

The channel is the shared sender loop over a publish to the widget replicas
(``common.providers.widget.WIDGET``): ``sent`` means published, ``delivered`` that the browser
acknowledged the reply.
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.providers.widget import WIDGET
from services.senders import loop


def send_widget(ids: list[int]) -> None:
    loop.run(WIDGET, ids, current_lane())


ACTORS = lane_actors("widget", send_widget)
