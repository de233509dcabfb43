"""AI stage actors, one per plan lane: queues ``ai_premium``, ``ai_pro`` and ``ai_basic``.

Each lane has its own queue and its own greenlets in ``postroom worker ai`` (premium gets the
most), so a basic plan's backlog never delays a premium customer's answer. The job is
``services.processing.ai.answer_turns``; each turn's reply goes on to processing after its own
commit.
"""

from __future__ import annotations

from common.broker import current_lane, lane_actors
from common.config import settings
from services.processing import ai


def answer_turns(ids: list[int]) -> None:
    ai.answer_turns(ids, current_lane())


# The time limit is the lease (a turn that outlives it may have lost its conversation to another
# worker anyway). A batch stays well inside it: at most dispatch.BATCH_SIZES["ai"] turns, each
# waiting for a call slot only until ai.slot_wait_seconds() (the lease less the longest call,
# POSTROOM_AI_TIMEOUT_SECONDS, less ai.TURN_MARGIN_SECONDS) and committing when its call returns.
ACTORS = lane_actors("ai", answer_turns, time_limit=int(settings.postroom_ai_lease_seconds * 1000))
