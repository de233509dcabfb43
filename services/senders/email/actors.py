"""Email sender actors, one per lane: queues ``email_urgent`` and ``email_bulk``.

The email channel is the shared sender loop over pooled SMTP sessions
(``common.providers.smtp_email.EMAIL``).
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.providers.smtp_email import EMAIL
from services.senders import loop


def send_email(ids: list[int]) -> None:
    loop.run(EMAIL, ids, current_lane())


ACTORS = lane_actors("email", send_email)
