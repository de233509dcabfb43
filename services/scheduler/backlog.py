"""The scheduler's backlog duty: every few seconds, the deployment's backlog as gauges.

Per stage and lane, how many messages are ready and not yet taken and how long the oldest has
waited (``common.backlog``, the figures ``GET /v1/stats`` shows one workspace), and how many
scheduled messages fall due within the next hour. Every replica sets the same deployment-wide
values: dashboards and alerts take their ``max``.
"""

from __future__ import annotations

import time

from common import backlog, metrics
from common.db.connection import transaction

MEASURE_EVERY_SECONDS = 5.0  # the scheduler passes every second; Prometheus scrapes every 15 s or more
NEXT_HOUR_SECONDS = 3600.0
_last_measured = float("-inf")


def measure(force: bool = False) -> bool:
    """Set the backlog gauges, unless they were set less than ``MEASURE_EVERY_SECONDS`` ago.
    Returns whether it measured."""
    global _last_measured
    if not force and time.monotonic() - _last_measured < MEASURE_EVERY_SECONDS:
        return False
    with transaction():
        figures = backlog.measure(None, scheduled=False, finished=False)
        due_soon = backlog.scheduled_due_within(NEXT_HOUR_SECONDS)
    for (stage, lane), f in figures.items():
        metrics.MESSAGES_WAITING.labels(stage=stage, lane=lane).set(f.waiting)
        metrics.OLDEST_WAITING.labels(stage=stage, lane=lane).set(f.oldest_waiting_seconds)
    metrics.SCHEDULED_DUE_NEXT_HOUR.set(due_soon)
    _last_measured = time.monotonic()
    return True
